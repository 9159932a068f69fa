"""Leases by the coordinator's clock: expiry makes a new attempt, late results are refused.

This module's coordinator has 1-second leases and 2 attempts per job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.coordinator._helpers import (
    CoordinatorProcess,
    World,
    running_coordinator,
    world_on,
)

LEASE_S = 1.0


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("leases"), lease_s=LEASE_S, max_attempts=2) as coord:
        yield coord


@pytest.fixture(scope="module")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    with world_on(coordinator) as w:
        yield w


def _run_state(world: World, run_id: str) -> dict[str, Any]:
    with world.user("coordinator") as c:
        return dict(c.get(f"/runs/{run_id}").json())


def test_expired_lease_gives_a_new_attempt_and_refuses_the_late_result(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    first = site.claim()
    assert first["attempt"] == 1
    # A long poll parked meanwhile gets the job back once the lease runs out (the
    # coordinator requeues it and wakes the poll): attempt 2, same job, signed anew.
    t0 = time.monotonic()
    r = site.next(wait=10)
    waited = time.monotonic() - t0
    assert r.status_code == 200
    second = r.json()["envelope"]
    assert (second["job_id"], second["attempt"]) == (first["job_id"], 2)
    assert second["signature"] != first["signature"]
    assert 0.5 < waited < 3.0
    # The expired attempt can neither renew nor post.
    r = site.http.post(f"/site/jobs/{first['job_id']}/lease", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")
    r = site.post(first["job_id"], site.result(first))
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")
    # The attempt holding the lease can.
    r = site.post(second["job_id"], site.result(second))
    assert r.json() == {"accepted": True, "duplicate": False}
    state = _run_state(world, run["run_id"])
    assert state["state"] == "done" and state["jobs"][0]["attempt"] == 2


def test_after_max_attempts_the_job_fails_lease_expired(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    site.claim()
    time.sleep(LEASE_S + 0.1)
    last = site.claim()
    assert last["attempt"] == 2
    deadline = time.monotonic() + 5
    while _run_state(world, run["run_id"])["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
    job = _run_state(world, run["run_id"])["jobs"][0]
    assert (job["state"], job["reason"], job["attempt"]) == ("failed", "lease_expired", 2)
    assert site.next().status_code == 204
    r = site.post(last["job_id"], site.result(last))
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")


def test_renewing_keeps_the_lease(world: World) -> None:
    site = world.new_sites(1)[0]
    world.start_run([site])
    env = site.claim()
    for _ in range(6):  # 1.8 s of work with a 1 s lease
        time.sleep(0.3)
        r = site.http.post(f"/site/jobs/{env['job_id']}/lease", json={"attempt": 1})
        assert r.status_code == 200, r.text
    assert site.post(env["job_id"], site.result(env)).json()["duplicate"] is False


def test_a_runner_that_dies_mid_job_is_replaced_and_one_result_counts(world: World) -> None:
    """Two runners of one site: the first claims and dies; the second finishes the job."""
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    dead = site.claim()
    got: dict[str, Any] = {}

    def second_runner() -> None:
        got["r"] = site.next(wait=10)

    t = threading.Thread(target=second_runner)
    t.start()
    t.join(timeout=15)
    env = got["r"].json()["envelope"]
    assert env["attempt"] == 2
    assert site.post(env["job_id"], site.result(env)).status_code == 200
    assert site.post(dead["job_id"], site.result(dead)).status_code == 409
    with world.user("scientist") as c:
        res = c.get(f"/runs/{run['run_id']}/results").json()
    assert [(s["attempt"], s["status"]) for s in res["sites"]] == [(2, "succeeded")]
