"""Every endpoint checks its caller's role: endpoints x callers over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jipkit.protocol.api import API
from tests.coordinator._helpers import World

CALLERS = ("anonymous", "bad_token", "site", "outsider", "scientist", "reviewer", "coordinator", "admin")
MEMBERS = {"scientist", "reviewer", "coordinator", "admin"}

# (name, method, path, body, callers allowed); {study}, {version}, {run}, {job} filled in.
ENDPOINTS: list[tuple[str, str, str, Any, set[str]]] = [
    ("keys", "GET", "/keys", None, MEMBERS | {"outsider", "site"}),
    ("create_study", "POST", "/studies", "study", {"admin"}),
    ("list_studies", "GET", "/studies", None, MEMBERS | {"outsider"}),
    ("list_runs", "GET", "/studies/{study}/runs", None, MEMBERS),
    ("add_member", "POST", "/studies/{study}/members", {"username": "frank", "role": "reviewer"}, {"admin"}),
    ("submit", "POST", "/studies/{study}/notebooks", "notebook", {"scientist"}),
    ("list_versions", "GET", "/studies/{study}/notebooks", None, MEMBERS),
    ("get_version", "GET", "/notebooks/{version}", None, MEMBERS),
    ("review", "POST", "/notebooks/{version}/reviews", {"decision": "approve"}, {"reviewer"}),
    ("start_run", "POST", "/runs", "run", {"coordinator"}),
    ("get_run", "GET", "/runs/{run}", None, MEMBERS),
    ("cancel_run", "POST", "/runs/{run}/cancel", None, {"coordinator", "admin"}),
    ("results", "GET", "/runs/{run}/results", None, MEMBERS),
    ("next_job", "GET", "/site/jobs/next?wait=0", None, {"site"}),
    ("renew", "POST", "/site/jobs/{job}/lease", {"attempt": 1}, {"site"}),
    ("result", "POST", "/site/jobs/{job}/result", {"type": "jip.result/1"}, {"site"}),
    ("held", "POST", "/site/jobs/{job}/held", {"attempt": 1}, {"site"}),
    ("decline", "POST", "/site/jobs/{job}/decline", {"attempt": 1, "reason": "declined"}, {"site"}),
]


@pytest.fixture(scope="module")
def setup(world: World) -> Iterator[dict[str, Any]]:
    """An idle site (no runner), a run on it, and a client per caller."""
    idle = world.new_sites(1)[0]
    svc = world.svc
    svc.create_user("frank", "another long password")
    run = world.start_run([idle])
    clients = {
        "anonymous": world.coord.client(),
        "bad_token": world.coord.client("jipu_not-a-real-token"),
        "site": idle.http,
    }
    for role in ("outsider", "scientist", "reviewer", "coordinator", "admin"):
        clients[role] = world.user(role)
    yield {"run": run["run_id"], "job": str(uuid.uuid4()), "clients": clients, "idle": idle.name}
    for k, c in clients.items():
        if k != "site":
            c.close()


def _body(kind: Any, world: World, setup: dict[str, Any], caller: str) -> Any:
    from tests.coordinator._helpers import make_notebook

    if kind == "study":
        return {"name": f"matrix-{caller}", "review_quorum": 1, "sites": []}
    if kind == "notebook":
        return {"notebook": make_notebook()}
    if kind == "run":
        return {
            "study": world.study,
            "version_hash": world.version_hash,
            "sites": [setup["idle"]],
            "deadline_s": 60,
        }
    return kind


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("name", "method", "path", "body", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_role_checked(
    world: World,
    setup: dict[str, Any],
    name: str,
    method: str,
    path: str,
    body: Any,
    allowed: set[str],
    caller: str,
) -> None:
    url = path.format(study=world.study, version=world.version_hash, run=setup["run"], job=setup["job"])
    client: httpx.Client = setup["clients"][caller]
    r = client.request(method, url, json=_body(body, world, setup, caller))
    if caller in ("anonymous", "bad_token"):
        assert r.status_code == 401, r.text
        assert r.json()["reason"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
    elif caller in allowed:
        assert r.status_code not in (401, 403), r.text
        assert r.status_code < 500, r.text
    elif caller == "outsider" and _per_id(path):
        # Not even whether the id exists: the very answer to an id that does not.
        unknown = {"version": "f" * 64, "run": "run-" + "0" * 32, "job": setup["job"]}
        other = client.request(
            method, path.format(study=world.study, **unknown), json=_body(body, world, setup, caller)
        )
        assert (r.status_code, r.json()["reason"]) == (404, "not_found"), r.text
        assert (other.status_code, other.json()["reason"]) == (404, "not_found"), other.text
        known = {"version": world.version_hash, "run": setup["run"]}
        assert r.json()["detail"] == _swap(other.json()["detail"], unknown, known)
        assert set(r.json()) == {"detail", "reason"}
        assert world.study not in r.text
    else:
        assert r.status_code == 403, r.text
        assert r.json()["reason"] == "forbidden"
        assert set(r.json()) == {"detail", "reason"}


def _per_id(path: str) -> bool:
    """An endpoint that finds a notebook version or a run by its id."""
    return "{version}" in path or "{run}" in path


def _swap(text: str, unknown: dict[str, str], known: dict[str, str]) -> str:
    for k, v in known.items():
        text = text.replace(unknown[k], v)
    return text


def test_every_api_path_is_in_the_matrix(world: World) -> None:
    """A new endpoint without a row above fails here."""
    paths = set(httpx.get(f"{world.coord.url}/openapi.json").json()["paths"])
    covered = {
        API
        + p.split("?")[0]
        .replace("{version}", "{version_hash}")
        .replace("{run}", "{run_id}")
        .replace("{job}", "{job_id}")
        for _, _, p, _, _ in ENDPOINTS
    }
    unauthenticated = {f"{API}/auth/token", f"{API}/sites/enrol"}
    assert paths - unauthenticated == covered


def test_password_and_enrol_token_endpoints_refuse_wrong_secrets(world: World) -> None:
    with world.coord.client() as anon:
        r = anon.post("/auth/token", json={"username": "alice", "password": "wrong password!"})
        assert (r.status_code, r.json()["reason"]) == (401, "login_failed")
        r = anon.post("/auth/token", json={"username": "nobody", "password": "wrong password!"})
        assert (r.status_code, r.json()["reason"]) == (401, "login_failed")
        from jipkit.protocol.signing import SigningKey

        pk = SigningKey.generate().public_b64
        r = anon.post(
            "/sites/enrol", json={"site": world.sites[0].name, "enrol_token": "jipe_guess", "public_key": pk}
        )
        assert (r.status_code, r.json()["reason"]) == (401, "enrol_token_invalid")


def test_enrol_token_is_one_time(world: World) -> None:
    from jipkit.protocol.signing import SigningKey

    ticket = world.svc.add_site("one-time", study=world.study)
    body = {
        "site": "one-time",
        "enrol_token": ticket.enrol_token,
        "public_key": SigningKey.generate().public_b64,
    }
    with world.coord.client() as anon:
        assert anon.post("/sites/enrol", json=body).status_code == 200
        r = anon.post("/sites/enrol", json=body)
    assert (r.status_code, r.json()["reason"]) == (401, "enrol_token_invalid")


def test_user_token_is_not_a_site_token(world: World) -> None:
    with world.user("admin") as admin:
        r = admin.get("/site/jobs/next", params={"wait": 0})
    assert (r.status_code, r.json()["reason"]) == (403, "forbidden")
