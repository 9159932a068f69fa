"""Reviews, runs, envelopes, claims, results, cancel and decline over real HTTP."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

from jipkit.protocol.notebook import version_hash
from jipkit.protocol.signing import SigningKey, verify_document
from tests.coordinator._helpers import PASSWORD, World, count, make_notebook, measure


def _submit(world: World, role: str, nb: dict[str, Any]) -> str:
    with world.user(role) as c:
        r = c.post(f"/studies/{world.study}/notebooks", json={"notebook": nb})
    assert r.status_code == 200, r.text
    return str(r.json()["version_hash"])


def _review(world: World, role: str, vh: str, decision: str = "approve") -> Any:
    with world.user(role) as c:
        return c.post(f"/notebooks/{vh}/reviews", json={"decision": decision, "comment": "checked"})


def _run(world: World, vh: str, params: dict[str, Any] | None = None, sites: list[str] | None = None) -> Any:
    with world.user("coordinator") as c:
        return c.post(
            "/runs",
            json={
                "study": world.study,
                "version_hash": vh,
                "parameters": params or {},
                "sites": sites,
                "deadline_s": 60,
            },
        )


# ---------------------------------------------------------------------- reviews


def test_submission_gives_hash_and_parameter_schema(world: World) -> None:
    nb = make_notebook(body="y = 2")
    with world.user("scientist") as c:
        r = c.post(f"/studies/{world.study}/notebooks", json={"notebook": nb})
        again = c.post(f"/studies/{world.study}/notebooks", json={"notebook": nb})
    body = r.json()
    assert body["version_hash"] == version_hash(nb)
    assert body["parameters"]["threshold"] == {"type": "integer", "default": -500}
    assert body["state"] == "pending" and body["existing"] is False
    assert again.json()["existing"] is True


def test_malformed_notebook_refused(world: World) -> None:
    with world.user("scientist") as c:
        r = c.post(f"/studies/{world.study}/notebooks", json={"notebook": {"nbformat": 3, "cells": []}})
    assert (r.status_code, r.json()["reason"]) == (400, "notebook_invalid")


def test_self_review_refused_and_quorum_of_two_others(world: World) -> None:
    vh = _submit(world, "author_reviewer", make_notebook(body="z = 3"))
    r = _review(world, "author_reviewer", vh)
    assert (r.status_code, r.json()["reason"]) == (403, "self_review")
    assert _run(world, vh).json()["reason"] == "not_approved"
    r = _review(world, "reviewer", vh)
    assert (r.json()["state"], r.json()["approvals"]) == ("pending", 1)
    assert (_run(world, vh).status_code, _run(world, vh).json()["reason"]) == (409, "not_approved")
    r = _review(world, "reviewer2", vh)
    assert (r.json()["state"], r.json()["approvals"]) == ("approved", 2)
    with world.user("outsider") as c:  # not even whether it exists
        assert (c.get(f"/notebooks/{vh}").status_code, c.get("/notebooks/" + "0" * 64).status_code) == (
            404,
            404,
        )
    with world.user("scientist") as c:
        got = c.get(f"/notebooks/{vh}").json()
    assert [rv["reviewer"] for rv in got["reviews"]] == ["bob", "carol"]
    assert version_hash(got["notebook"]) == vh


def test_a_version_or_run_of_another_study_answers_as_one_that_does_not_exist(world: World) -> None:
    """A version hash can be computed from a notebook file: a member of another study learns
    neither that the version (or a run) exists nor the name of its study."""
    other, name = f"other-{uuid.uuid4().hex[:8]}", f"mallory-{uuid.uuid4().hex[:8]}"
    world.svc.create_study(other, review_quorum=1)
    world.svc.create_user(name, PASSWORD)
    for role in ("scientist", "reviewer", "coordinator"):
        world.svc.grant_role(other, name, role)
    with world.coord.client() as anon:
        token = anon.post("/auth/token", json={"username": name, "password": PASSWORD}).json()["token"]
    run_id = world.start_run(world.new_sites(1))["run_id"]
    vh, no_vh, no_run = world.version_hash, "0" * 64, "run-" + "0" * 32
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/notebooks/{v}", None),
        ("POST", "/notebooks/{v}/reviews", {"decision": "reject"}),
        ("GET", "/runs/{r}", None),
        ("GET", "/runs/{r}/results", None),
        ("POST", "/runs/{r}/cancel", None),
        ("POST", "/runs", {"study": other, "version_hash": "{v}", "deadline_s": 60}),
    ]
    with world.coord.client(token) as mallory:
        for method, path, body in requests:

            def send(v: str, r: str, method: str = method, path: str = path, body: Any = body) -> Any:
                filled = json.loads(json.dumps(body).replace("{v}", v)) if body else None
                return mallory.request(method, path.format(v=v, r=r), json=filled)

            known, unknown = send(vh, run_id), send(no_vh, no_run)
            assert (known.status_code, known.json()["reason"]) == (404, "not_found"), (path, known.text)
            assert known.json() == {
                **unknown.json(),
                "detail": unknown.json()["detail"].replace(no_vh, vh).replace(no_run, run_id),
            }, path
            assert world.study not in known.text
        r = mallory.post(f"/studies/{other}/notebooks", json={"notebook": make_notebook()})
    assert (r.status_code, r.json()["reason"]) == (409, "version_in_other_study")
    assert world.study not in r.json()["detail"] and "another study" in r.json()["detail"]
    world.svc.grant_role(other, "alice", "scientist")
    with world.user("scientist") as c:  # a member of the version's study is told which
        r = c.post(f"/studies/{other}/notebooks", json={"notebook": make_notebook()})
    assert (r.status_code, r.json()["reason"]) == (409, "version_in_other_study")
    assert f"study {world.study!r}" in r.json()["detail"]
    with world.user("reviewer") as c:  # a member without the role: 403, as before
        r = c.post(f"/runs/{run_id}/cancel")
    assert (r.status_code, r.json()["reason"]) == (403, "forbidden")


def test_a_rejection_rejects(world: World) -> None:
    vh = _submit(world, "scientist", make_notebook(body="w = 4"))
    _review(world, "reviewer", vh)
    assert _review(world, "reviewer2", vh, "reject").json()["state"] == "rejected"
    assert _run(world, vh).json()["reason"] == "not_approved"


def test_quorum_is_configurable_per_study(world: World) -> None:
    with world.user("admin") as admin:
        assert admin.post("/studies", json={"name": "quick", "review_quorum": 1}).status_code == 201
        assert (
            admin.post("/studies/quick/members", json={"username": "alice", "role": "scientist"}).status_code
            == 200
        )
        assert (
            admin.post("/studies/quick/members", json={"username": "bob", "role": "reviewer"}).status_code
            == 200
        )
    with world.user("scientist") as c:
        vh = c.post("/studies/quick/notebooks", json={"notebook": make_notebook(body="q = 1")}).json()[
            "version_hash"
        ]
    assert _review(world, "reviewer", vh).json()["state"] == "approved"
    with world.user("scientist") as c:
        listed = c.get("/studies/quick/notebooks").json()["versions"]
    assert [(v["version_hash"], v["state"], v["review_quorum"]) for v in listed] == [(vh, "approved", 1)]


# ---------------------------------------------------------------------- runs and parameters


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"thresold": -400}, "'thresold' is not a parameter"),
        ({"threshold": "high"}, "'threshold' must be of JSON type integer"),
        ({"fraction": "half"}, "'fraction' must be of JSON type number"),
        ({"label": 3}, "'label' must be of JSON type string"),
    ],
)
def test_unknown_or_mistyped_parameters_refused(world: World, params: dict[str, Any], names: str) -> None:
    site = world.new_sites(1)[0]
    r = _run(world, world.version_hash, params, [site.name])
    assert (r.status_code, r.json()["reason"]) == (400, "parameters_invalid")
    assert names in r.json()["detail"]
    assert site.next().status_code == 204  # no job was made


def test_right_parameters_accepted_integer_for_number(world: World) -> None:
    site = world.new_sites(1)[0]
    r = _run(world, world.version_hash, {"threshold": -300, "fraction": 1, "label": "x"}, [site.name])
    assert r.status_code == 201, r.text
    assert site.claim()["parameters"] == {"threshold": -300, "fraction": 1, "label": "x"}


def test_sites_outside_the_study_refused(world: World) -> None:
    r = _run(world, world.version_hash, {}, ["not-a-site"])
    assert (r.status_code, r.json()["reason"]) == (400, "site_not_in_study")


def test_envelope_signed_with_published_key(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site], {"threshold": -100})
    r = site.next()
    assert r.status_code == 200
    env, lease = r.json()["envelope"], r.json()["lease_expires_at"]
    keys = site.http.get("/keys").json()["keys"]
    assert verify_document(env, keys) == env["signature"]["key_id"]
    assert env["type"] == "jip.job/1"
    assert (env["job_id"], env["run_id"], env["site"], env["attempt"]) == (
        run["jobs"][0]["job_id"],
        run["run_id"],
        site.name,
        1,
    )
    assert version_hash(env["notebook"]) == env["version_hash"] == world.version_hash
    assert env["parameters"] == {"threshold": -100} and env["deadline_s"] == 60
    assert env["issued_at"] < env["expires_at"] and lease > env["issued_at"]
    tampered = {**env, "parameters": {"threshold": 0}}
    with pytest.raises(Exception, match="changed after signing"):
        verify_document(tampered, keys)


def test_long_poll_wakes_when_a_job_is_queued(world: World) -> None:
    site = world.new_sites(1)[0]
    got: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        got["response"] = site.next(wait=10)
        got["s"] = time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    world.start_run([site])
    t.join(timeout=15)
    assert got["response"].status_code == 200
    assert 0.4 < got["s"] < 3.0


def test_long_poll_times_out_with_204(world: World) -> None:
    site = world.new_sites(1)[0]
    t0 = time.monotonic()
    assert site.next(wait=0.5).status_code == 204
    assert 0.4 < time.monotonic() - t0 < 3.0


# ---------------------------------------------------------------------- sites


def test_site_token_isolation(world: World) -> None:
    a, b = world.new_sites(2)
    run = world.start_run([a, b])
    job_b = next(j["job_id"] for j in run["jobs"] if j["site"] == b.name)
    env_a = a.claim()
    assert env_a["site"] == a.name
    assert a.next().status_code == 204  # A never gets B's job
    # A cannot renew, post for, or decline B's job, whatever it signs.
    r = a.http.post(f"/site/jobs/{job_b}/lease", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (403, "wrong_site")
    fake_env = {**env_a, "job_id": job_b, "site": b.name}
    r = a.post(job_b, a.result(fake_env))
    assert (r.status_code, r.json()["reason"]) == (403, "wrong_site")
    r = a.http.post(f"/site/jobs/{job_b}/decline", json={"attempt": 1, "reason": "declined"})
    assert (r.status_code, r.json()["reason"]) == (403, "wrong_site")
    # A's own job, but the result names B, or is signed by a key A does not have pinned.
    r = a.post(env_a["job_id"], a.result(env_a, site=b.name))
    assert (r.status_code, r.json()["reason"]) == (403, "wrong_site")
    r = a.post(env_a["job_id"], b.result(env_a))
    assert (r.status_code, r.json()["reason"]) == (400, "unknown_key")
    r = a.post(env_a["job_id"], make_tampered(a.result(env_a)))
    assert (r.status_code, r.json()["reason"]) == (400, "signature_invalid")
    # B's job is untouched and B can claim it.
    assert b.claim()["job_id"] == job_b
    assert a.post(env_a["job_id"], a.result(env_a)).status_code == 200


def make_tampered(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "records": [count("ct_series", 1)]}


def test_duplicate_result_acknowledged_different_refused(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    doc = site.result(env, records=[count("ct_series", 12)])
    r = site.post(env["job_id"], doc)
    assert r.json() == {"accepted": True, "duplicate": False}
    r = site.post(env["job_id"], doc)
    assert (r.status_code, r.json()) == (200, {"accepted": True, "duplicate": True})
    r = site.post(env["job_id"], site.result(env, records=[count("ct_series", 13)]))
    assert (r.status_code, r.json()["reason"]) == (409, "result_conflict")
    with world.user("scientist") as c:
        res = c.get(f"/runs/{run['run_id']}/results").json()
        state = c.get(f"/runs/{run['run_id']}").json()
    assert res["sites"][0]["records"] == [count("ct_series", 12)]
    assert state["state"] == "done" and state["jobs"][0]["state"] == "succeeded"
    r = site.http.post(f"/site/jobs/{env['job_id']}/lease", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")


def test_failed_result_carries_only_codes(world: World) -> None:
    s1, s2, s3 = world.new_sites(3)
    world.start_run([s1, s2, s3])
    e1, e2, e3 = s1.claim(), s2.claim(), s3.claim()
    ok = s1.result(e1, status="failed", reason="cell_error", failed_cell=2, exception="ValueError")
    assert s1.post(e1["job_id"], ok).status_code == 200
    named = s2.result(e2, status="failed", reason="cell_error", failed_cell=2, exception="PatientSmithError")
    r = s2.post(e2["job_id"], named)
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
    texty = s3.result(e3, status="failed", reason="Traceback: /data/smith/scan.dcm not found")
    r = s3.post(e3["job_id"], texty)
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
    r = s3.post(e3["job_id"], s3.result(e3, status="refused", reason="hash_mismatch"))
    assert r.status_code == 200


def test_cancel(world: World) -> None:
    a, b = world.new_sites(2)
    run = world.start_run([a, b])
    env = a.claim()
    with world.user("scientist") as c:
        assert c.post(f"/runs/{run['run_id']}/cancel").status_code == 403
    with world.user("coordinator") as c:
        r = c.post(f"/runs/{run['run_id']}/cancel")
        assert r.status_code == 200 and sorted(r.json()["cancelled"]) == sorted(
            j["job_id"] for j in run["jobs"]
        )
        state = c.get(f"/runs/{run['run_id']}").json()
    assert state["state"] == "cancelled" and state["counts"] == {"cancelled": 2}
    r = a.http.post(f"/site/jobs/{env['job_id']}/lease", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (409, "cancelled")
    r = a.post(env["job_id"], a.result(env))
    assert (r.status_code, r.json()["reason"]) == (409, "cancelled")
    assert b.next().status_code == 204


def test_decline(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    r = site.http.post(f"/site/jobs/{env['job_id']}/decline", json={"attempt": 1, "reason": "my own words"})
    assert (r.status_code, r.json()["reason"]) == (400, "reason_invalid")
    r = site.http.post(f"/site/jobs/{env['job_id']}/decline", json={"attempt": 1, "reason": "policy_study"})
    assert r.json() == {"declined": True, "duplicate": False}
    r = site.http.post(f"/site/jobs/{env['job_id']}/decline", json={"attempt": 1, "reason": "policy_study"})
    assert r.json()["duplicate"] is True
    with world.user("coordinator") as c:
        state = c.get(f"/runs/{run['run_id']}").json()
    assert state["state"] == "done"
    assert (state["jobs"][0]["state"], state["jobs"][0]["reason"]) == ("declined", "policy_study")
    r = site.post(env["job_id"], site.result(env))
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")


def test_results_combined_across_sites(world: World) -> None:
    rng = np.random.default_rng(7)
    sites = world.new_sites(4)
    run = world.start_run(sites)
    raw = {s.name: rng.normal(4000, 600, size=n) for s, n in zip(sites, (30, 12, 45, 8), strict=True)}
    for i, s in enumerate(sites):
        env = s.claim()
        data = raw[s.name]
        if i == 3:  # a failed site: its records do not count
            doc = s.result(env, status="failed", reason="kernel_died", records=[count("ct_series", 99)])
        else:
            recs = [
                count("ct_series", None if i == 1 else 10 * (i + 1)),
                measure("lung_volume", float(data.mean()), len(data), float(data.std(ddof=1))),
            ]
            doc = s.result(env, records=recs)
        assert s.post(env["job_id"], doc).status_code == 200
    with world.user("reviewer") as c:
        res = c.get(f"/runs/{run['run_id']}/results").json()
    combined = {c["name"]: c for c in res["combined"]}
    ct = combined["ct_series"]
    assert ct["pooled"] == {"total": 10 + 30}  # suppressed at site 1: missing, not 0
    assert ct["missing"] == 2 and ct["sites"] == 2
    assert set(ct["missing_sites"]) == {sites[1].name, sites[3].name}
    pooled_data = np.concatenate([raw[s.name] for s in sites[:3]])
    vol = combined["lung_volume"]["pooled"]
    assert vol["n"] == len(pooled_data)
    assert vol["mean"] == pytest.approx(pooled_data.mean(), rel=1e-12)
    assert vol["sd"] == pytest.approx(pooled_data.std(ddof=1), rel=1e-12)
    failed = next(s for s in res["sites"] if s["site"] == sites[3].name)
    assert (failed["status"], failed["reason"]) == ("failed", "kernel_died")


def test_keys_endpoint_matches_the_key_file(world: World) -> None:
    key = SigningKey.load(world.coord.config.key_file)
    with world.user("outsider") as c:
        assert c.get("/keys").json() == {"keys": {key.key_id: key.public_b64}}


def test_nan_and_infinity_are_not_json(world: World) -> None:
    site = world.new_sites(1)[0]
    world.start_run([site])
    env = site.claim()
    text = json.dumps(site.result(env, records=[measure("vol", 1.5, 3)])).replace("1.5", "NaN")
    r = site.http.post(
        f"/site/jobs/{env['job_id']}/result", content=text, headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
    body = {"study": world.study, "version_hash": world.version_hash, "parameters": {"fraction": 0.5}}
    with world.user("coordinator") as c:
        r = c.post(
            "/runs",
            content=json.dumps(body).replace("0.5", "Infinity"),
            headers={"content-type": "application/json"},
        )
    assert (r.status_code, r.json()["reason"]) == (400, "parameters_invalid")
    with world.user("scientist") as c:
        r = c.post(f"/studies/{world.study}/notebooks", json={"notebook": make_notebook("big = 1e999\n")})
    assert (r.status_code, r.json()["reason"]) == (400, "notebook_invalid")


def test_refusal_of_an_unreadable_envelope_is_shown(world: World) -> None:
    """A runner refusing an envelope it cannot trust reports what it saw: maybe no run or hash."""
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    seen = {**env, "run_id": None, "version_hash": None}
    r = site.post(env["job_id"], site.result(seen, status="refused", reason="signature_invalid"))
    assert r.json() == {"accepted": True, "duplicate": False}
    with world.user("coordinator") as c:
        job = c.get(f"/runs/{run['run_id']}").json()["jobs"][0]
    assert (job["state"], job["reason"]) == ("refused", "signature_invalid")
    other = world.new_sites(1)[0]
    world.start_run([other])
    env = other.claim()
    r = other.post(env["job_id"], other.result({**env, "run_id": "run-other"}))  # not a refusal: must match
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
