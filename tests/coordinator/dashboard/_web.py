"""Helpers for the dashboard's tests: the dashboard's coordinator and world, logged-in
HTTP clients, notebooks, simulated sites' results."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from jipkit.coordinator.service import Service
from jipkit.protocol.canonical import canonical_json, sha256_hex
from tests.coordinator._helpers import PASSWORD, CoordinatorProcess, Site, World, enrol_site, make_result

USERS = {
    "scientist": "alice",
    "reviewer": "bob",
    "reviewer2": "carol",
    "coordinator": "dave",
    "outsider": "eve",
    "author_reviewer": "sam",
    "admin": "root",
}
"""The shared world's users (tests/coordinator/_helpers.build_world), by role."""

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test (or worker) uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


class UI:
    """A browser-like HTTP client of the dashboard, logged in as one user."""

    def __init__(self, coord: CoordinatorProcess, username: str | None = None) -> None:
        self.coord = coord
        self.http = httpx.Client(base_url=coord.url, timeout=30.0, follow_redirects=False)
        self.csrf = ""
        if username is not None:
            r = self.login(username)
            assert r.status_code == 303, r.text

    def login(self, username: str, password: str = PASSWORD, next_url: str = "") -> httpx.Response:
        page = self.http.get("/ui/login")
        assert page.status_code == 200, page.text
        r = self.post(
            "/ui/login",
            {"csrf": csrf_of(page.text), "username": username, "password": password, "next": next_url},
        )
        if r.status_code == 303:
            self.csrf = csrf_of(self.get("/ui/studies").text)
        return r

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(
        self, path: str, data: Mapping[str, Any], origin: str | None = "same", **kw: Any
    ) -> httpx.Response:
        headers = {} if origin is None else {"Origin": self.coord.url if origin == "same" else origin}
        return self.http.post(path, data=dict(data), headers=headers, **kw)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> UI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Dash:
    """The dashboard tests' coordinator, its world (users, study, quorum 2) and the sites they enrol."""

    world: World
    study: str
    sites: list[Site] = field(default_factory=list)

    @property
    def coord(self) -> CoordinatorProcess:
        return self.world.coord

    @property
    def svc(self) -> Service:
        return self.world.svc

    def api(self, role: str) -> httpx.Client:
        return self.world.user(role)

    def ui(self, role: str) -> UI:
        return UI(self.coord, USERS[role])

    def new_sites(self, n: int) -> list[Site]:
        out = [enrol_site(self.coord, self.svc, unique("dsite"), self.study) for _ in range(n)]
        self.sites.extend(out)
        return out

    def submit(self, notebook: Mapping[str, Any], role: str = "scientist") -> str:
        with self.api(role) as c:
            r = c.post(f"/studies/{self.study}/notebooks", json={"notebook": dict(notebook)})
        assert r.status_code == 200, r.text
        return str(r.json()["version_hash"])

    def review(self, vh: str, role: str, decision: str = "approve") -> httpx.Response:
        with self.api(role) as c:
            return c.post(f"/notebooks/{vh}/reviews", json={"decision": decision, "comment": "ok"})

    def approved(self, notebook: Mapping[str, Any]) -> str:
        vh = self.submit(notebook)
        for role in ("reviewer", "reviewer2"):
            assert self.review(vh, role).status_code == 200
        return vh

    def version(self, vh: str) -> dict[str, Any]:
        with self.api("scientist") as c:
            r = c.get(f"/notebooks/{vh}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def start_run(self, vh: str, sites: Sequence[Site], parameters: Mapping[str, Any] | None = None) -> str:
        with self.api("coordinator") as c:
            r = c.post(
                "/runs",
                json={
                    "study": self.study,
                    "version_hash": vh,
                    "parameters": dict(parameters or {}),
                    "sites": [s.name for s in sites],
                    "deadline_s": 60,
                },
            )
        assert r.status_code == 201, r.text
        return str(r.json()["run_id"])

    def close(self) -> None:
        for s in self.sites:
            s.http.close()


def notebook(title: str = "Cohort overview", scale: float = 1.0, extra: str = "") -> dict[str, Any]:
    """The dashboard tests' notebook: two counts (one below the sites' k of 5) and a measure."""
    cells = [
        ("markdown", [], f"# {title}\n\nPatients, a rare finding and the mean volume per site."),
        ("code", ["parameters"], f"threshold = -500\nscale = {scale!r}"),
        ("code", [], 'import jipkit as jip\n\nprint(f"threshold {threshold}, scale {scale}")'),
        (
            "code",
            [],
            'jip.record("patients", 42, kind="count", of="patients")\n'
            'jip.record("rare_findings", 3, kind="count", of="patients")\n'
            'jip.record("volume_mean", 4700.0 * scale, unit="ml", n=42, sd=80.0)\nNone',
        ),
        ("code", [], 'from IPython.display import HTML\n\nHTML("<b>summary</b>: 42 patients")' + extra),
    ]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {
                "cell_type": k,
                "metadata": {"tags": t} if t else {},
                "source": s,
                **({"outputs": []} if k == "code" else {}),
            }
            for k, t, s in cells
        ],
    }


def provenance(vh: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A result's provenance section as a runner writes it (without the audit section)."""
    return {
        "version_hash": vh,
        "parameters_sha256": sha256_hex(canonical_json(dict(parameters))),
        "environment": {"digest": "ab" * 32, "python": "3.11.9", "packages": 123},
        "data": None,
    }


def post_result(site: Site, envelope: Mapping[str, Any], **kw: Any) -> None:
    """Sign and post a result for a claimed envelope; it must be accepted."""
    r = site.post(envelope["job_id"], make_result(envelope, site.key, **kw))
    assert r.status_code == 200, r.text
