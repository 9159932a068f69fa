"""The release queue and provenance, with the runner against the real coordinator over HTTP.

A result the site's policy holds waits at the site (the coordinator shows it held) until
data stewards release it with ``jip site release``; a rejection sends the reason code
only; two stewards may be required.  Every result carries its provenance under the
site's signature: a salted data manifest the site can prove later, and the site audit
log's entries, whose rewriting or truncation the coordinator flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import platform
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jipkit.config import SiteConfig
from jipkit.coordinator import audit as coordinator_audit
from jipkit.errors import FederationError, SignatureError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.signing import SigningKey, verify_document
from jipkit.site.cli import main as site_main
from jipkit.site.provenance import environment_lines, salted_uid
from jipkit.site.runner import Runner
from jipkit.site.state import RunnerState, _entry_hash
from tests.coordinator._helpers import (
    CoordinatorProcess,
    World,
    running_coordinator,
    world_on,
)
from tests.site.conftest import NOTEBOOKS, enrol_new_site

STUDY = "lung"
UIDS = ["1.2.826.0.1.3680043.8.498.10001", "1.2.826.0.1.3680043.8.498.10002"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("coordinator"), lease_s=3.0, max_attempts=3) as coord:
        yield coord


@pytest.fixture(scope="module")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    with world_on(coordinator, study=STUDY, quorum=2) as w:
        yield w


@pytest.fixture(scope="module")
def version(world: World) -> str:
    """The test notebook ``ok`` submitted to the study and approved."""
    nb = json.loads((NOTEBOOKS / "ok.ipynb").read_text(encoding="utf-8"))
    with world.user("scientist") as c:
        r = c.post(f"/studies/{STUDY}/notebooks", json={"notebook": nb})
        assert r.status_code == 200, r.text
        vh = str(r.json()["version_hash"])
    for reviewer in ("reviewer", "reviewer2"):
        with world.user(reviewer) as c:
            assert c.post(f"/notebooks/{vh}/reviews", json={"decision": "approve"}).status_code == 200
    return vh


def start_run(world: World, vh: str, site: str, parameters: dict[str, Any] | None = None) -> str:
    with world.user("coordinator") as c:
        r = c.post(
            "/runs",
            json={
                "study": STUDY,
                "version_hash": vh,
                "parameters": parameters or {},
                "sites": [site],
                "deadline_s": 60,
            },
        )
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


def site_entry(world: World, run_id: str) -> dict[str, Any]:
    with world.user("scientist") as c:
        r = c.get(f"/runs/{run_id}/results")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["sites"]
    return dict(entry)


_counter = [0]


def enrolled_site(world: World, tmp_path: Path, kernel_dir: Path, **policy: Any) -> tuple[SiteConfig, str]:
    """A new site enrolled over HTTP, and its configuration file (for ``jip site ...``)."""
    _counter[0] += 1
    name = f"rel{_counter[0]}-{os.getpid()}"
    cfg, _ = enrol_new_site(world, tmp_path, kernel_dir, name, STUDY, {"allow_unisolated": True, **policy})
    fed = cfg.federation
    assert fed is not None
    written = ("studies", "coordinators", "allow_unisolated", *policy)
    pol = {k: v for k, v in fed.policy.model_dump(mode="json").items() if k in written}
    lines = [
        f"name = {json.dumps(name)}",
        f"index_path = {json.dumps(str(cfg.index_path))}",
        f"cache_dir = {json.dumps(str(cfg.cache_dir))}",
        "[federation]",
    ]
    for key in ("coordinator_url", "key_path", "token_file", "pinned_keys_file", "workdir", "state_db"):
        lines.append(f"{key} = {json.dumps(str(getattr(fed, key)))}")
    lines.append(f"kernel_dirs = {json.dumps([str(kernel_dir)])}")
    lines.append("[federation.policy]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in pol.items()]
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg, str(path)


def jip_site(config: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = site_main(["--config", config, "site", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_one(cfg: SiteConfig, series: list[str] | None = None) -> Any:
    """One poll of a runner; the outcome says it read ``series`` (the data channel's hook)."""
    with Runner(cfg) as runner:
        if series is not None:
            real = runner._execute

            def with_series(*args: Any, **kw: Any) -> Any:
                out = real(*args, **kw)
                return dataclasses.replace(out, series_read=tuple(series))  # what the data channel recorded

            runner._execute = with_series  # type: ignore[method-assign]
        report = runner.run_once(wait_s=5)
    assert report is not None
    return report


def signed_result(cfg: SiteConfig, job_id: str) -> dict[str, Any]:
    assert cfg.federation is not None
    with RunnerState(cfg.federation.state_db) as st:
        rec = st.job(job_id)
    assert rec is not None and rec.result is not None
    return dict(json.loads(rec.result))


def audit_events(cfg: SiteConfig, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    assert cfg.federation is not None
    with RunnerState(cfg.federation.state_db) as st:
        assert st.verify_audit() > 0
        return [(e.event, e.detail) for e in st.audit_entries() if e.job_id == job_id]


# ---------------------------------------------------------------------- release queue


def test_a_held_result_waits_until_a_steward_releases_it(
    world: World, version: str, tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, config = enrolled_site(world, tmp_path, kernel_dir, release_required=True)
    run_id = start_run(world, version, cfg.name, {"threshold": -300})
    report = run_one(cfg)
    assert (report.status, report.reason, report.delivered) == ("held", None, True)
    job = report.job_id
    entry = site_entry(world, run_id)
    assert (entry["state"], entry["status"], entry["records"], entry["outputs"]) == ("held", None, [], [])
    with world.user("coordinator") as c:
        assert c.get(f"/runs/{run_id}").json()["state"] == "running"

    rc, out, _ = jip_site(config, "release", "list", capsys=capsys)
    assert (
        rc == 0 and job in out and "pending" in out and "approvals 0/1" in out and "release_required" in out
    )
    rc, out, _ = jip_site(config, "release", "show", job[:8], capsys=capsys)
    assert rc == 0
    assert "lung: threshold -300" in out  # the outputs that would leave
    assert "patients (count) = 12" in out and "volume_mean (measure)" in out  # the records
    assert 'jip.record("patients", 12, kind="count", of="patients")' in out  # the notebook source
    assert "redaction report:\n  float_rounded: 1 at record 1, name volume_mean" in out  # 7068.75 -> 7069
    assert "to stderr" not in out.split("notebook source")[0]  # stderr never leaves: not shown as leaving

    rc, out, _ = jip_site(
        config, "release", "approve", job, "--by", "alice", "--comment", "checked", capsys=capsys
    )
    assert rc == 0 and "released by alice" in out and "coordinator acknowledged it" in out
    entry = site_entry(world, run_id)
    assert (entry["state"], entry["status"]) == ("succeeded", "succeeded")
    assert [r["name"] for r in entry["records"]] == ["patients", "volume_mean"]
    assert entry["release"] == {
        "decision": "approved",
        "stewards": 1,
        "decided_at": entry["release"]["decided_at"],
    }
    assert entry["provenance"]["signature"]["ok"] and entry["provenance"]["parameters_match"] is True
    assert "alice" not in json.dumps(entry) and "checked" not in json.dumps(entry)  # names stay at the site
    events = [e for e, _ in audit_events(cfg, job)]
    assert events.index("held") < events.index("release_approve") < events.index("released")
    assert events.index("released") < events.index("release_sealed") < events.index("upload_acknowledged")
    (detail,) = [d for e, d in audit_events(cfg, job) if e == "release_approve"]
    assert detail["by"] == "alice" and detail["comment_sha256"] == sha256_hex(b"checked")
    rc, out, err = jip_site(config, "release", "approve", job, "--by", "bob", capsys=capsys)
    assert rc == 2 and "approved already" in err


def test_a_rejected_result_sends_its_reason_and_never_its_content(
    world: World, version: str, tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, config = enrolled_site(world, tmp_path, kernel_dir, release_studies=[STUDY])
    run_id = start_run(world, version, cfg.name, {"threshold": -301})
    report = run_one(cfg)
    assert report.status == "held"
    assert cfg.federation is not None
    with RunnerState(cfg.federation.state_db) as st, pytest.raises(FederationError, match="comment"):
        st.decide(report.job_id, "carol", "reject", "  ")
    rc, out, _ = jip_site(
        config,
        "release",
        "reject",
        report.job_id,
        "--by",
        "carol",
        "--comment",
        "shows a face",
        capsys=capsys,
    )
    assert rc == 0 and "rejected by carol" in out and "release_rejected, no content" in out
    entry = site_entry(world, run_id)
    assert (entry["state"], entry["status"], entry["reason"]) == ("failed", "failed", "release_rejected")
    assert (entry["outputs"], entry["records"], entry["release"]["decision"]) == ([], [], "rejected")
    sent = signed_result(cfg, report.job_id)
    assert (sent["outputs"], sent["records"], sent["failed_cell"], sent["exception"]) == ([], [], None, None)
    text = json.dumps(sent)
    assert "threshold -301" not in text and "patients" not in text and "shows a face" not in text
    assert "carol" not in text
    with RunnerState(cfg.federation.state_db) as st:
        rec = st.release(report.job_id)
    assert rec is not None and rec.status == "rejected" and rec.decisions[0].comment == "shows a face"
    assert "release_reject" in [e for e, _ in audit_events(cfg, report.job_id)]


def test_two_different_stewards_must_approve(
    world: World, version: str, tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, config = enrolled_site(world, tmp_path, kernel_dir, release_required=True, release_stewards=2)
    run_id = start_run(world, version, cfg.name)
    job = run_one(cfg).job_id
    rc, out, _ = jip_site(config, "release", "approve", job, "--by", "alice", capsys=capsys)
    assert rc == 0 and "1 more approval(s) needed" in out
    assert site_entry(world, run_id)["state"] == "held"
    rc, _, err = jip_site(config, "release", "approve", job, "--by", "alice", capsys=capsys)
    assert rc == 2 and "alice has decided on job" in err and "2 different stewards" in err
    rc, out, _ = jip_site(config, "release", "list", "--format", "json", capsys=capsys)
    (row,) = json.loads(out)
    assert (row["job"], row["approvals"], row["status"]) == (job, "1/2", "pending")
    rc, out, _ = jip_site(config, "release", "approve", job, "--by", "bob", "--no-upload", capsys=capsys)
    assert rc == 0 and "released by bob" in out and "runner signs and sends it" in out
    assert site_entry(world, run_id)["state"] == "held"  # not sent yet
    with Runner(cfg) as runner:  # the runner's loop signs and sends it
        assert runner.run_once(wait_s=0) is None
    entry = site_entry(world, run_id)
    assert (entry["state"], entry["release"]["stewards"]) == ("succeeded", 2)
    rc, out, _ = jip_site(config, "release", "list", capsys=capsys)
    assert "no result waits for release" in out
    rc, out, _ = jip_site(config, "release", "list", "--all", capsys=capsys)
    assert job in out and "approved" in out


# ---------------------------------------------------------------------- provenance


def test_provenance_is_signed_and_the_salted_manifest_is_provable_at_the_site(
    world: World, version: str, tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, config = enrolled_site(world, tmp_path, kernel_dir)
    params = {"threshold": -250, "scale": 2}
    run_id = start_run(world, version, cfg.name, params)
    report = run_one(cfg, series=[*UIDS, UIDS[0]])
    assert (report.status, report.delivered) == ("succeeded", True)
    doc = signed_result(cfg, report.job_id)
    assert cfg.federation is not None
    with RunnerState(cfg.federation.state_db) as st:
        manifest = st.manifest(report.job_id)
        kept = st.notebook(version)
    key = SigningKey.load(cfg.federation.key_path)
    pinned = {key.key_id: key.public_b64}
    assert verify_document(doc, pinned) == key.key_id
    prov = doc["provenance"]
    assert prov["version_hash"] == version and kept is not None and kept["format"] == "jip-notebook/1"
    assert prov["parameters_sha256"] == sha256_hex(canonical_json(params))
    env = prov["environment"]
    assert env["python"] == platform.python_version() and env["packages"] > 10 and len(env["digest"]) == 64
    assert set(prov["audit"]) == {"first_seq", "prev", "hashes"} and prov["audit"]["hashes"]

    # The manifest: 2 series, salted; the site keeps the salt and can prove what was used.
    data = prov["data"]
    assert data["series"] == 2 and len(data["uids"]) == 2 and manifest is not None
    assert manifest.uids == sorted(UIDS) and hashlib.sha256(manifest.salt).hexdigest() == data["salt_sha256"]
    assert sorted(salted_uid(manifest.salt, u) for u in UIDS) == data["uids"]
    # Without the salt the UIDs cannot be found: not their plain hashes, not under another salt.
    for uid in UIDS:
        assert hashlib.sha256(uid.encode()).hexdigest() not in data["uids"]
        assert hmac.new(b"\0" * 32, uid.encode(), hashlib.sha256).hexdigest() not in data["uids"]
        assert uid not in json.dumps(doc)
    rc, out, _ = jip_site(config, "provenance", report.job_id, capsys=capsys)
    assert rc == 0 and manifest.salt.hex() in out and all(u in out for u in UIDS)
    assert "matches the salt and UIDs kept here" in out

    # A second result over the same series cannot be linked to the first.
    start_run(world, version, cfg.name, params)
    second = run_one(cfg, series=UIDS)
    other = signed_result(cfg, second.job_id)["provenance"]["data"]
    assert set(other["uids"]).isdisjoint(data["uids"]) and other["salt_sha256"] != data["salt_sha256"]

    # The signature covers the provenance: a changed field does not verify, nor is it accepted.
    for path in (("environment", "digest"), ("data", "series"), ("parameters_sha256",)):
        forged = json.loads(json.dumps(doc))
        target = forged["provenance"]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = "0" * 64 if path[-1] != "series" else 3
        with pytest.raises(SignatureError):
            verify_document(forged, pinned)
    token = (tmp_path / "site-token").read_text().strip()
    with world.coord.client(token) as http:
        r = http.post(f"/site/jobs/{report.job_id}/result", content=canonical_json(forged))
    assert (r.status_code, r.json()["reason"]) == (400, "signature_invalid")
    entry = site_entry(world, run_id)
    assert entry["provenance"]["series"] == 2 and entry["provenance"]["environment_digest"] == env["digest"]


def test_the_environment_digest_is_over_the_kernels_packages(kernel_dir: Path) -> None:
    from jipkit.site.provenance import environment_digest

    found = environment_digest(kernel_dir / "jip")
    assert found is not None and found.python == platform.python_version()
    names = {line.split("==")[0] for line in found.packages}
    assert {"ipykernel", "jipkit", "numpy"} <= names
    assert found.digest == sha256_hex("\n".join(environment_lines(found.python, found.packages)).encode())
    assert found.to_dict() == {
        "digest": found.digest,
        "python": found.python,
        "packages": len(found.packages),
    }


def _tamper(state_db: Path, how: str) -> None:
    """Change the site audit log behind the runner's back (it is append-only by triggers)."""
    db = sqlite3.connect(state_db)
    try:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
        rows = db.execute(
            "SELECT seq, at, event, job_id, detail, prev, hash FROM audit ORDER BY seq"
        ).fetchall()
        if how == "truncate":
            db.execute("DELETE FROM audit WHERE seq > ?", (len(rows) - 4,))
        else:  # rewrite an early entry and recompute the chain after it: the site's own check passes
            prev = rows[1][6]
            for seq, at, event, job, detail, _, _ in rows[2:]:
                if seq == 3:
                    detail = canonical_json({"rewritten": True}).decode()
                digest = _entry_hash(seq, at, event, job, detail, prev)
                db.execute(
                    "UPDATE audit SET detail = ?, prev = ?, hash = ? WHERE seq = ?",
                    (detail, prev, digest, seq),
                )
                prev = digest
        db.commit()
    finally:
        db.close()


def test_a_rewritten_or_truncated_site_audit_log_is_flagged_by_the_coordinator(
    world: World, version: str, tmp_path: Path, kernel_dir: Path
) -> None:
    cfg, _ = enrolled_site(world, tmp_path, kernel_dir)
    assert cfg.federation is not None
    statuses = []
    for tamper in (None, None, "truncate", None, "rewrite"):
        if tamper is not None:
            _tamper(cfg.federation.state_db, tamper)
        run_id = start_run(world, version, cfg.name)
        report = run_one(cfg)
        assert (report.status, report.delivered) == ("succeeded", True)
        entry = site_entry(world, run_id)
        statuses.append(entry["provenance"]["audit"]["status"])
        if tamper is not None:
            assert any("site audit log break" in w for w in entry["provenance"]["warnings"])
    assert statuses == ["first", "continuous", "break", "continuous", "break"]
    with RunnerState(cfg.federation.state_db) as st:
        assert st.verify_audit() > 0  # the rewritten chain is consistent: only the coordinator can tell
    with world.svc.db.read() as c:
        breaks = [
            e
            for e in coordinator_audit.entries(c, limit=100_000)
            if e["action"] == "site_audit_break" and e["data"]["site"] == cfg.name
        ]
    assert len(breaks) == 2 and all(b["actor"] == "coordinator" for b in breaks)
