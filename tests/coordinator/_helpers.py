"""Helpers for the coordinator's tests: a real coordinator process, simulated sites,
notebooks and signed results built by the test itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jipkit.coordinator.config import load_coordinator_config
from jipkit.coordinator.service import Service
from jipkit.protocol.api import API
from jipkit.protocol.messages import RESULT_TYPE, utcnow_iso
from jipkit.protocol.signing import SigningKey, sign_document

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long test password"
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1}
"""Cheaper argon2id parameters: the tests check that passwords are argon2id hashes, not its cost."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without any JIP_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JIP_")}


class CoordinatorProcess:
    """A real ``jip coordinator serve`` in a subprocess, on its own data folder and port.

    Stopped by PID: :meth:`stop` (SIGTERM) or :meth:`kill` (SIGKILL).
    """

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = root / "coordinator.toml"
        lines = ['data_dir = "data"', f"port = {self.port}"]
        lines += [f"{k} = {v!r}" for k, v in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "serve.log"

    @property
    def config(self) -> Any:
        return load_coordinator_config(self.config_path)

    @property
    def db_path(self) -> Path:
        return Path(self.config.database_file)

    def cli(
        self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``jip <args>`` (this package's commands) as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "jipkit.coordinator.cli", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**clean_env(), **(env or {})},
            timeout=60,
        )

    def init(self) -> None:
        out = self.cli("coordinator", "init", "-c", str(self.config_path))
        assert out.returncode == 0, out.stderr

    def service(self) -> Service:
        """A Service on the same database (for setting up users and sites, like the CLI does)."""
        return Service.open(self.config)

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jipkit.coordinator.cli",
                    "coordinator",
                    "serve",
                    "-c",
                    str(self.config_path),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=clean_env(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"the coordinator exited: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the coordinator did not start in {timeout} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + API, headers=headers, timeout=30.0)


@dataclass
class Site:
    """A simulated site: its key, its token and an HTTP client with that token."""

    name: str
    key: SigningKey
    token: str
    http: httpx.Client

    def next(self, wait: float = 0) -> httpx.Response:
        return self.http.get("/site/jobs/next", params={"wait": wait})

    def claim(self) -> dict[str, Any]:
        r = self.next()
        assert r.status_code == 200, (r.status_code, r.text)
        return dict(r.json()["envelope"])

    def post(self, job_id: str, doc: Mapping[str, Any]) -> httpx.Response:
        return self.http.post(f"/site/jobs/{job_id}/result", json=dict(doc))

    def result(self, envelope: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        return make_result(envelope, self.key, **kw)


def enrol_site(coord: CoordinatorProcess, svc: Service, name: str, study: str) -> Site:
    """Register a site (as ``add-site`` does) and enrol it over HTTP with a new key."""
    ticket = svc.add_site(name, study=study)
    key = SigningKey.generate()
    with httpx.Client(base_url=coord.url + API, timeout=30.0) as anon:
        r = anon.post(
            "/sites/enrol",
            json={"site": name, "enrol_token": ticket.enrol_token, "public_key": key.public_b64},
        )
    assert r.status_code == 200, r.text
    token = r.json()["site_token"]
    return Site(name, key, token, coord.client(token))


def make_notebook(
    parameters: str = "threshold = -500\nlabel = 'lung'\nfraction = 0.5\n", body: str = "x = 1"
) -> dict[str, Any]:
    """A small nbformat 4 notebook with a parameters cell."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Cohort overview"},
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": parameters, "outputs": []},
            {"cell_type": "code", "metadata": {}, "source": body, "outputs": []},
        ],
    }


def count(name: str, value: int | None, of: str = "series") -> dict[str, Any]:
    rec: dict[str, Any] = {"schema": "jip.record/1", "name": name, "kind": "count", "value": value, "of": of}
    if value is None:
        rec["suppressed"] = True
    return rec


def measure(name: str, value: float, n: int, sd: float | None = None, unit: str = "ml") -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema": "jip.record/1",
        "name": name,
        "kind": "measure",
        "value": value,
        "n": n,
        "unit": unit,
    }
    if sd is not None:
        rec["sd"] = sd
    return rec


def make_result(
    envelope: Mapping[str, Any],
    key: SigningKey,
    *,
    status: str = "succeeded",
    reason: str | None = None,
    records: Sequence[Mapping[str, Any]] = (),
    failed_cell: int | None = None,
    exception: str | None = None,
    attempt: int | None = None,
    site: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result document for an envelope, signed with a site key (as the runner would).

    ``extra``: further members (``provenance``, ``release``), or replacements, before signing.
    """
    now = utcnow_iso()
    doc = {
        "type": RESULT_TYPE,
        "job_id": envelope["job_id"],
        "attempt": envelope["attempt"] if attempt is None else attempt,
        "run_id": envelope["run_id"],
        "site": envelope["site"] if site is None else site,
        "version_hash": envelope["version_hash"],
        "status": status,
        "reason": reason,
        "failed_cell": failed_cell,
        "exception": exception,
        "outputs": [{"cell": 2, "outputs": [{"output_type": "stream", "name": "stdout", "text": "ok\n"}]}],
        "records": list(records),
        "started_at": now,
        "finished_at": now,
        "kernel": "jip",
        **(extra or {}),
    }
    return sign_document(doc, key)


@dataclass
class World:
    """A coordinator with users, a study, enrolled sites and an approved notebook version.

    ``tokens`` are API tokens by role: admin, scientist, reviewer, reviewer2,
    coordinator, outsider (no role in the study), author_reviewer (scientist and
    reviewer).
    """

    coord: CoordinatorProcess
    study: str
    tokens: dict[str, str]
    version_hash: str
    svc: Service
    sites: list[Site] = field(default_factory=list)
    _counter: int = 0

    def user(self, role: str) -> httpx.Client:
        return self.coord.client(self.tokens[role])

    def new_sites(self, n: int) -> list[Site]:
        """Fresh enrolled sites in the study: no other test's jobs reach them."""
        out = []
        for _ in range(n):
            self._counter += 1
            site = enrol_site(self.coord, self.svc, f"s{self._counter}-{os.getpid()}", self.study)
            self.sites.append(site)
            out.append(site)
        return out

    def start_run(self, sites: Sequence[Site], parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        with self.user("coordinator") as c:
            r = c.post(
                "/runs",
                json={
                    "study": self.study,
                    "version_hash": self.version_hash,
                    "parameters": dict(parameters or {}),
                    "sites": [s.name for s in sites],
                    "deadline_s": 60,
                },
            )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def close(self) -> None:
        for s in self.sites:
            s.http.close()
        self.svc.close()


def build_world(coord: CoordinatorProcess, study: str = "lung", quorum: int = 2) -> World:
    """Users, roles, a study and an approved version on a running coordinator."""
    svc = coord.service()
    if not svc.has_admin():
        svc.create_user("root", PASSWORD, admin=True)
    svc.create_study(study, review_quorum=quorum)
    roles = {
        "scientist": ("alice", ["scientist"]),
        "reviewer": ("bob", ["reviewer"]),
        "reviewer2": ("carol", ["reviewer"]),
        "coordinator": ("dave", ["coordinator"]),
        "outsider": ("eve", []),
        "author_reviewer": ("sam", ["scientist", "reviewer"]),
    }
    for username, granted in roles.values():
        svc.create_user(username, PASSWORD)
        for role in granted:
            svc.grant_role(study, username, role)
    tokens: dict[str, str] = {}
    with coord.client() as anon:
        for label, username in [("admin", "root"), *((k, v[0]) for k, v in roles.items())]:
            r = anon.post("/auth/token", json={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[label] = r.json()["token"]
    world = World(coord, study, tokens, "", svc)
    with world.user("scientist") as c:
        r = c.post(f"/studies/{study}/notebooks", json={"notebook": make_notebook()})
        assert r.status_code == 200, r.text
        world.version_hash = r.json()["version_hash"]
    for reviewer in ("reviewer", "reviewer2")[:quorum]:
        with world.user(reviewer) as c:
            r = c.post(f"/notebooks/{world.version_hash}/reviews", json={"decision": "approve"})
            assert r.status_code == 200, r.text
    return world


@contextmanager
def running_coordinator(root: Path, **settings: Any) -> Iterator[CoordinatorProcess]:
    """A coordinator process in ``root`` (cheap argon2, 3 attempts unless ``settings`` say
    otherwise), initialised, started, and stopped by its PID at the end."""
    coord = CoordinatorProcess(root, **{**FAST_ARGON2, "max_attempts": 3, **settings})
    coord.init()
    coord.start()
    try:
        yield coord
    finally:
        coord.stop()


@contextmanager
def world_on(coord: CoordinatorProcess, **kwargs: Any) -> Iterator[World]:
    """:func:`build_world` on ``coord``, closed at the end."""
    w = build_world(coord, **kwargs)
    try:
        yield w
    finally:
        w.close()
