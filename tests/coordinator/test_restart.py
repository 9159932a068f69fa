"""The coordinator killed with SIGKILL during a run comes back with nothing lost or doubled."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.coordinator._helpers import (
    CoordinatorProcess,
    Site,
    World,
    count,
    running_coordinator,
    world_on,
)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("restart"), lease_s=30.0, max_attempts=3) as coord:
        yield coord


@pytest.fixture(scope="module")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    with world_on(coordinator) as w:
        yield w


def _post_until_answered(site: Site, env: dict[str, Any], doc: dict[str, Any], out: dict[str, Any]) -> None:
    """What a runner does: retry the upload through connection errors until it gets an answer."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = site.post(env["job_id"], doc)
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        out[site.name] = r
        return


def test_sigkill_mid_run_loses_and_doubles_nothing(world: World, coordinator: CoordinatorProcess) -> None:
    sites = world.new_sites(8)
    run = world.start_run(sites)
    envs = {s.name: s.claim() for s in sites[:7]}  # the 8th has not polled yet
    docs = {
        s.name: s.result(envs[s.name], records=[count("ct_series", i + 1)]) for i, s in enumerate(sites[:7])
    }
    for s in sites[:2]:  # two results are in before the crash
        assert s.post(envs[s.name]["job_id"], docs[s.name]).status_code == 200
    # Four runners upload while the coordinator is killed; they retry as runners do.
    answers: dict[str, Any] = {}
    uploaders = [
        threading.Thread(target=_post_until_answered, args=(s, envs[s.name], docs[s.name], answers))
        for s in sites[2:6]
    ]
    for t in uploaders:
        t.start()
    coordinator.kill()
    coordinator.start()
    for t in uploaders:
        t.join(timeout=40)
    assert {name: r.status_code for name, r in answers.items()} == {s.name: 200 for s in sites[2:6]}

    # After the restart: the 7th still holds its lease (same attempt), the 8th claims now.
    s7, s8 = sites[6], sites[7]
    r = s7.http.post(f"/site/jobs/{envs[s7.name]['job_id']}/lease", json={"attempt": 1})
    assert r.status_code == 200, r.text
    assert s7.post(envs[s7.name]["job_id"], docs[s7.name]).json()["duplicate"] is False
    env8 = s8.claim()
    assert s8.post(env8["job_id"], s8.result(env8, records=[count("ct_series", 8)])).status_code == 200
    # Uploads repeated after the restart are acknowledged as duplicates.
    for s in sites[:6]:
        r = s.post(envs[s.name]["job_id"], docs[s.name])
        assert r.json() == {"accepted": True, "duplicate": True}

    with world.user("coordinator") as c:
        state = c.get(f"/runs/{run['run_id']}").json()
        res = c.get(f"/runs/{run['run_id']}/results").json()
    assert state["state"] == "done" and state["counts"] == {"succeeded": 8}
    assert sorted(j["job_id"] for j in state["jobs"]) == sorted(j["job_id"] for j in run["jobs"])
    assert res["combined"][0]["pooled"] == {"total": sum(range(1, 9))}

    db = sqlite3.connect(f"file:{coordinator.db_path}?mode=ro", uri=True)
    try:
        per_job = db.execute(
            "SELECT j.job_id, count(r.job_id) FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id "
            "WHERE j.run_id = ? GROUP BY j.job_id",
            (run["run_id"],),
        ).fetchall()
        runs = db.execute("SELECT count(*) FROM runs WHERE run_id = ?", (run["run_id"],)).fetchone()[0]
        accepted = db.execute(
            "SELECT count(*) FROM audit WHERE action = 'result' AND subject IN "
            "(SELECT job_id FROM jobs WHERE run_id = ?)",
            (run["run_id"],),
        ).fetchone()[0]
    finally:
        db.close()
    assert runs == 1 and len(per_job) == 8 and all(n == 1 for _, n in per_job)
    assert accepted == 8
    assert world.svc.verify_audit().ok
