"""Held jobs and result provenance at the coordinator, with simulated sites over real HTTP.

A held job keeps no lease and takes the held attempt's result later; a rejected release
carries its reason only; each result's provenance is shown, its signature checked again,
and the continuity of the site's audit log followed (a rewritten or truncated log is
flagged and recorded).  This module's coordinator has 1-second leases.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jipkit.coordinator.cli import main
from jipkit.coordinator.db import SCHEMA_VERSION, Database
from jipkit.protocol.canonical import canonical_json, sha256_hex
from tests.coordinator._helpers import (
    CoordinatorProcess,
    Site,
    World,
    count,
    running_coordinator,
    world_on,
)

LEASE_S = 1.0
GENESIS = "0" * 64


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("provenance"), lease_s=LEASE_S, max_attempts=3) as coord:
        yield coord


@pytest.fixture(scope="module")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    with world_on(coordinator) as w:
        yield w


class FakeLog:
    """A site audit log as its results show it: entry hashes by sequence number."""

    def __init__(self) -> None:
        self.hashes: list[str] = []
        self._n = 0

    def _new(self) -> str:
        self._n += 1
        return hashlib.sha256(f"entry-{self._n}-{id(self)}".encode()).hexdigest()

    def append(self, k: int) -> None:
        self.hashes += [self._new() for _ in range(k)]

    def rewrite(self, from_seq: int) -> None:
        """Entries from ``from_seq`` on are replaced (their hashes all change)."""
        self.hashes[from_seq - 1 :] = [self._new() for _ in self.hashes[from_seq - 1 :]]

    def truncate(self, n: int) -> None:
        del self.hashes[n:]

    def section(self, first_seq: int) -> dict[str, Any]:
        prev = GENESIS if first_seq == 1 else self.hashes[first_seq - 2]
        return {"first_seq": first_seq, "prev": prev, "hashes": self.hashes[first_seq - 1 :]}


def provenance(
    env: dict[str, Any], audit: dict[str, Any] | None, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    params = env["parameters"] if parameters is None else parameters
    return {
        "version_hash": env["version_hash"],
        "parameters_sha256": sha256_hex(canonical_json(params)),
        "environment": {"digest": "e" * 64, "python": "3.11.7", "packages": 42},
        "data": {"series": 2, "uids": ["a" * 64, "b" * 64], "salt_sha256": "c" * 64},
        "audit": audit,
    }


def results(world: World, run_id: str) -> dict[str, Any]:
    with world.user("scientist") as c:
        r = c.get(f"/runs/{run_id}/results")
    assert r.status_code == 200, r.text
    return dict(r.json())


def run_state(world: World, run_id: str) -> dict[str, Any]:
    with world.user("coordinator") as c:
        return dict(c.get(f"/runs/{run_id}").json())


def held(site: Site, env: dict[str, Any], attempt: int | None = None) -> Any:
    return site.http.post(
        f"/site/jobs/{env['job_id']}/held", json={"attempt": env["attempt"] if attempt is None else attempt}
    )


def released(env: dict[str, Any], decision: str = "approved") -> dict[str, Any]:
    extra: dict[str, Any] = {
        "release": {"decision": decision, "stewards": 2, "decided_at": "2026-01-01T00:00:00Z"}
    }
    if decision == "rejected":
        extra.update(outputs=[], records=[])
    return extra


# ---------------------------------------------------------------------- held jobs


def test_a_held_job_keeps_no_lease_and_takes_the_held_attempts_result(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    r = held(site, env)
    assert (r.status_code, r.json()) == (200, {"held": True, "duplicate": False})
    assert held(site, env).json() == {"held": True, "duplicate": True}
    (job,) = run_state(world, run["run_id"])["jobs"]
    assert (job["state"], job["attempt"], job["lease_expires_at"]) == ("held", 1, None)
    time.sleep(LEASE_S * 2.5)  # a lease would have run out twice
    assert site.next(wait=0).status_code == 204  # not leased again
    state = run_state(world, run["run_id"])
    assert state["state"] == "running" and state["counts"] == {"held": 1}
    (entry,) = results(world, run["run_id"])["sites"]
    assert (entry["state"], entry["status"]) == ("held", None) and entry["held_since"]
    r = site.http.post(f"/site/jobs/{env['job_id']}/lease", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")  # held: nothing to renew
    r = site.post(env["job_id"], site.result(env, attempt=2, records=[count("n", 9)]))
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")  # only the held attempt
    r = site.post(env["job_id"], site.result(env, records=[count("n", 9)], extra=released(env)))
    assert r.status_code == 200, r.text
    assert run_state(world, run["run_id"])["state"] == "done"
    (entry,) = results(world, run["run_id"])["sites"]
    assert (entry["state"], entry["status"], entry["release"]["decision"]) == (
        "succeeded",
        "succeeded",
        "approved",
    )
    assert entry["records"] == [count("n", 9)]


def test_only_the_attempt_holding_the_lease_can_hold(world: World) -> None:
    site = world.new_sites(1)[0]
    world.start_run([site])
    env = site.claim()
    r = held(site, env, attempt=2)
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")
    other = world.new_sites(1)[0]
    r = other.http.post(f"/site/jobs/{env['job_id']}/held", json={"attempt": 1})
    assert (r.status_code, r.json()["reason"]) == (403, "wrong_site")
    time.sleep(LEASE_S * 1.5)
    r = held(site, env)
    assert (r.status_code, r.json()["reason"]) == (409, "lease_lost")


def test_a_rejected_release_carries_its_reason_and_no_content(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    assert held(site, env).status_code == 200
    bad = site.result(env, extra={"release": {"decision": "rejected", "stewards": 1, "decided_at": None}})
    r = site.post(env["job_id"], bad)  # "rejected" but sent as succeeded, with content
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
    doc = site.result(env, status="failed", reason="release_rejected", extra=released(env, "rejected"))
    r = site.post(env["job_id"], doc)
    assert r.status_code == 200, r.text
    (entry,) = results(world, run["run_id"])["sites"]
    assert (entry["state"], entry["status"], entry["reason"]) == ("failed", "failed", "release_rejected")
    assert (entry["outputs"], entry["records"], entry["release"]["decision"]) == ([], [], "rejected")


def test_cancelling_a_run_ends_its_held_jobs(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    assert held(site, env).status_code == 200
    with world.user("coordinator") as c:
        out = c.post(f"/runs/{run['run_id']}/cancel").json()
    assert out["cancelled"] == [env["job_id"]]
    r = site.post(env["job_id"], site.result(env, extra=released(env)))
    assert (r.status_code, r.json()["reason"]) == (409, "cancelled")


# ---------------------------------------------------------------------- provenance


def test_provenance_is_shown_with_the_results_and_the_signature_checked_again(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site], {"threshold": -100})
    env = site.claim()
    log = FakeLog()
    log.append(4)
    doc = site.result(env, records=[count("n", 5)], extra={"provenance": provenance(env, log.section(1))})
    assert site.post(env["job_id"], doc).status_code == 200
    (entry,) = results(world, run["run_id"])["sites"]
    p = entry["provenance"]
    assert p["present"] and p["version_hash"] == env["version_hash"]
    assert p["parameters_sha256"] == sha256_hex(canonical_json({"threshold": -100}))
    assert p["parameters_match"] is True and p["environment_digest"] == "e" * 64 and p["series"] == 2
    assert p["signature"] == {"ok": True, "key_id": site.key.key_id}
    assert p["audit"]["status"] == "first" and p["audit"]["entries"] == 4 and p["warnings"] == []

    # The stored result changed behind the coordinator's back: its signature no longer holds.
    db = sqlite3.connect(world.coord.db_path)
    try:
        stored = json.loads(
            db.execute("SELECT document FROM results WHERE job_id = ?", (env["job_id"],)).fetchone()[0]
        )
        stored["provenance"]["data"]["series"] = 1
        with db:
            db.execute(
                "UPDATE results SET document = ? WHERE job_id = ?", (json.dumps(stored), env["job_id"])
            )
    finally:
        db.close()
    (entry,) = results(world, run["run_id"])["sites"]
    assert entry["provenance"]["signature"]["ok"] is False
    assert "the site's signature does not verify" in entry["provenance"]["warnings"]


def test_a_tampered_provenance_is_refused_and_a_malformed_one_too(world: World) -> None:
    site = world.new_sites(1)[0]
    run = world.start_run([site])
    env = site.claim()
    doc = site.result(env, extra={"provenance": provenance(env, None)})
    doc["provenance"]["data"]["series"] = 7  # changed after signing
    r = site.post(env["job_id"], doc)
    assert (r.status_code, r.json()["reason"]) == (400, "signature_invalid")
    prov = provenance(env, None)
    prov["data"]["uids"] = ["not a hash"]
    r = site.post(env["job_id"], site.result(env, extra={"provenance": prov}))
    assert (r.status_code, r.json()["reason"]) == (400, "result_invalid")
    r = site.post(env["job_id"], site.result(env, extra={"provenance": provenance(env, None, {"x": 1})}))
    assert r.status_code == 200  # accepted, but the parameters are not the run's: flagged
    (entry,) = results(world, run["run_id"])["sites"]
    assert entry["provenance"]["parameters_match"] is False
    assert "the parameters the site ran are not the run's" in entry["provenance"]["warnings"]


def _post_with_section(
    world: World, site: Site, section: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    run = world.start_run([site])
    env = site.claim()
    extra = {"provenance": provenance(env, section)} if section is not None else {}
    r = site.post(env["job_id"], site.result(env, extra=extra))
    assert r.status_code == 200, r.text
    (entry,) = results(world, run["run_id"])["sites"]
    return env["job_id"], entry["provenance"]


def test_the_continuity_of_a_sites_audit_log_is_followed(world: World) -> None:
    site = world.new_sites(1)[0]
    log = FakeLog()
    log.append(5)
    _, p = _post_with_section(world, site, log.section(1))
    assert p["audit"]["status"] == "first"
    log.append(4)
    _, p = _post_with_section(world, site, log.section(6))
    assert (p["audit"]["status"], p["audit"]["first_seq"], p["audit"]["entries"]) == ("continuous", 6, 4)
    _, p = _post_with_section(world, site, log.section(3))  # a late result, overlapping what was seen
    assert p["audit"]["status"] == "continuous" and p["warnings"] == []

    log.rewrite(4)  # entries 4..9 rewritten (the chain recomputed), then more appended
    log.append(3)
    job, p = _post_with_section(world, site, log.section(10))
    assert p["audit"]["status"] == "break" and "entry 9" in p["audit"]["problem"]
    assert any("site audit log break" in w for w in p["warnings"])
    log.append(2)
    _, p = _post_with_section(world, site, log.section(13))  # the new chain is followed: flagged once
    assert p["audit"]["status"] == "continuous"

    log.truncate(11)  # entries 12..14 removed, new ones written in their place
    log.append(2)
    _, p = _post_with_section(world, site, log.section(12))
    assert p["audit"]["status"] == "break" and "entry 12" in p["audit"]["problem"]

    log.append(10)
    _, p = _post_with_section(world, site, log.section(20))  # 14..19 never shown
    assert p["audit"]["status"] == "gap"
    _, p = _post_with_section(world, site, None)
    assert p["audit"]["status"] == "missing" and p["warnings"] == ["no provenance"]

    svc = world.coord.service()
    try:
        with svc.db.read() as c:
            breaks = [
                e
                for e in _audit_entries(c)
                if e["action"] == "site_audit_break" and e["data"]["site"] == site.name
            ]
    finally:
        svc.close()
    assert len(breaks) == 2 and breaks[0]["subject"] == job
    assert breaks[0]["data"]["seen_seq"] == 9 and breaks[0]["data"]["first_seq"] == 10


def _audit_entries(c: sqlite3.Connection) -> list[dict[str, Any]]:
    from jipkit.coordinator import audit

    return audit.entries(c, limit=100_000)


def test_results_long_shows_held_and_provenance(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = world.new_sites(2)
    run = world.start_run([a, b])
    env_a, env_b = a.claim(), b.claim()
    assert held(a, env_a).status_code == 200
    log = FakeLog()
    log.append(3)
    doc = b.result(env_b, records=[count("n", 8)], extra={"provenance": provenance(env_b, log.section(1))})
    assert b.post(env_b["job_id"], doc).status_code == 200
    monkeypatch.setenv("JIP_COORDINATOR_URL", world.coord.url)
    monkeypatch.setenv("JIP_COORDINATOR_TOKEN", world.tokens["scientist"])
    capsys.readouterr()
    assert main(["results", run["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "held at site" in out
    assert main(["results", run["run_id"], "--long"]) == 0
    out = capsys.readouterr().out
    assert "provenance" in out and "(run's)" in out and "first" in out and "ok" in out
    assert f"{a.name}: no provenance" not in out  # a held job has no result yet: nothing to warn about
    assert main(["results", run["run_id"], "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    by_site = {s["site"]: s for s in res["sites"]}
    assert by_site[a.name]["state"] == "held" and by_site[a.name]["provenance"] is None
    assert by_site[b.name]["provenance"]["signature"]["ok"] is True


def test_results_show_isolation_and_the_redaction_report(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = world.new_sites(2)
    run = world.start_run([a, b])
    env_a, env_b = a.claim(), b.claim()
    report = [
        {
            "rule": "identifier",
            "place": {"cell": 2, "output": 0},
            "count": 3,
            "detail": "PatientName (base64)",
        },
        {"rule": "k_suppression", "place": {"record": 0, "name": "n"}, "count": 1},
    ]
    doc_a = a.result(env_a, records=[count("n", 8)], extra={"isolation": "sandbox", "redactions": report})
    doc_b = b.result(env_b, records=[count("n", 9)], extra={"isolation": "none", "redactions": []})
    for site, env, doc in ((a, env_a, doc_a), (b, env_b, doc_b)):
        assert site.post(env["job_id"], doc).status_code == 200
    monkeypatch.setenv("JIP_COORDINATOR_URL", world.coord.url)
    monkeypatch.setenv("JIP_COORDINATOR_TOKEN", world.tokens["scientist"])
    capsys.readouterr()
    assert main(["results", run["run_id"]]) == 0
    out = capsys.readouterr().out
    assert f"{a.name}: ran in the site's sandbox; 2 redactions:" in out
    assert "  identifier: 3 at cell 2, output 0 [PatientName (base64)]" in out
    assert "  k_suppression: 1 at record 0, name n" in out
    assert f"{b.name}: ran UNISOLATED (the site's policy allows it); no redactions" in out
    assert main(["results", run["run_id"], "--long"]) == 0
    long = capsys.readouterr().out
    assert "isolation" in long and "redactions" in long and "identifier: 3 at cell 2" in long
    assert main(["results", run["run_id"], "--format", "json"]) == 0
    by_site = {s["site"]: s for s in json.loads(capsys.readouterr().out)["sites"]}
    assert by_site[a.name]["redactions"] == report and by_site[a.name]["isolation"] == "sandbox"
    assert by_site[b.name]["redactions"] == [] and by_site[b.name]["isolation"] == "none"


# ---------------------------------------------------------------------- storage


def test_a_version_1_database_is_migrated_to_allow_held(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    Database(path).close()
    con = sqlite3.connect(path)
    con.executescript(
        """
        PRAGMA foreign_keys=OFF;
        CREATE TABLE jobs_v1 (
            id INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE,
            run_id TEXT NOT NULL REFERENCES runs(run_id), site TEXT NOT NULL REFERENCES sites(name),
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'leased', 'succeeded', 'failed', 'refused', 'declined', 'cancelled')),
            attempt INTEGER NOT NULL DEFAULT 0, lease_expires_at REAL, envelope_sha256 TEXT, reason TEXT,
            updated_at TEXT NOT NULL);
        DROP TABLE jobs;
        ALTER TABLE jobs_v1 RENAME TO jobs;
        DROP TABLE result_checks;
        DROP TABLE site_audit;
        UPDATE meta SET value = '1' WHERE key = 'schema_version';
        INSERT INTO sites (name, created_at) VALUES ('s', 't');
        INSERT INTO users (id, username, password_hash, created_at) VALUES (1, 'u', 'x', 't');
        INSERT INTO studies VALUES ('st', 1, 't');
        INSERT INTO notebook_versions VALUES ('v', 'st', 1, 't', '{}', '{}', 'approved', 't');
        INSERT INTO runs VALUES ('r', 'st', 'v', '{}', 60, 1, 't', 'running', NULL);
        INSERT INTO jobs (job_id, run_id, site, state, attempt, updated_at) VALUES ('j', 'r', 's', 'leased', 1, 't');
        """
    )
    con.commit()
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("UPDATE jobs SET state = 'held'")
    con.close()
    db = Database(path)
    try:
        with db.write() as c:
            c.execute("UPDATE jobs SET state = 'held' WHERE job_id = 'j'")
            row = c.execute("SELECT job_id, run_id, site, state, attempt FROM jobs").fetchone()
            version = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            indexes = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
    assert tuple(row) == ("j", "r", "s", "held", 1)
    assert int(version) == SCHEMA_VERSION == 2
    assert {"result_checks", "site_audit"} <= tables
    assert {"jobs_site_state", "jobs_run_state", "jobs_lease"} <= indexes
