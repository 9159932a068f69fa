"""The release queue and provenance in the site's state and runner, without a coordinator process.

The audit sections results carry, the stewards' rules, sealing a decided release, the
hooks for the output checks and the data channel, and a held job leased again.
"""

from __future__ import annotations

import json
import random
import types
from pathlib import Path
from typing import Any

import pytest

from jipkit.errors import FederationError
from jipkit.protocol.signing import verify_document
from jipkit.site.fedconfig import SitePolicy
from jipkit.site.provenance import kernel_python, new_manifest, parameters_sha256, provenance, series_read
from jipkit.site.release import hold_reasons, redaction_report, released_document
from jipkit.site.runner import Runner
from jipkit.site.state import GENESIS, Prior, RunnerState, job_digest
from tests.site.conftest import SiteFixture, result_of
from tests.site.fakes import FakeCoordinator


def _held(st: RunnerState, env: dict[str, Any], stewards: int = 1) -> None:
    doc = {"job_id": env["job_id"], "attempt": env["attempt"], "status": "succeeded", "reason": None,
           "outputs": [{"cell": 1, "outputs": [{"output_type": "stream", "name": "stdout", "text": "n=12\n"}]}],
           "records": [{"name": "n"}], "failed_cell": None, "exception": None,
           "provenance": {"version_hash": env["version_hash"]}, "redactions": [{"rule": "identifier"}]}  # fmt: skip
    st.start(env)
    st.hold(
        env, "succeeded", None, doc, reasons=["release_required"], redactions=None, stewards_needed=stewards
    )


def test_audit_sections_start_after_the_last_acknowledged_result(site: SiteFixture, tmp_path: Path) -> None:
    with RunnerState(tmp_path / "s.sqlite") as st:
        st.audit("a")
        st.audit("b")
        first = st.audit_section("job-1")
        hashes = [e.hash for e in st.audit_entries()]
        assert first == {"first_seq": 1, "prev": GENESIS, "hashes": hashes}
        st.audit("c")
        again = st.audit_section("job-2")  # job-1 was not acknowledged: job-2 covers it all again
        assert again["first_seq"] == 1 and len(again["hashes"]) == 3
        st.mark_upload("job-1", "acknowledged")  # job-1 covered entries 1..2
        third = st.audit_section("job-3")
        entries = list(st.audit_entries())
        assert third == {"first_seq": 3, "prev": entries[1].hash, "hashes": [e.hash for e in entries[2:]]}
        st.audit_section("forged", record=False)
        st.mark_upload("forged", "acknowledged")  # not recorded: moves nothing
        assert st.audit_section(None, record=False)["first_seq"] == 3


def test_stewards_decide_once_each_and_a_rejection_needs_a_reason(site: SiteFixture, tmp_path: Path) -> None:
    env = site.envelope()
    with RunnerState(tmp_path / "s.sqlite") as st:
        _held(st, env, stewards=2)
        assert st.prior(env["job_id"], 2, job_digest(env)) is Prior.HELD
        assert st.prior(env["job_id"], 1, job_digest(env)) is Prior.REPLAY
        assert st.pending_uploads() == [] and st.interrupted() == []
        with pytest.raises(FederationError, match="steward's name"):
            st.decide(env["job_id"], " ", "approve")
        rec = st.decide(env["job_id"], "alice", "approve", "fine")
        assert (rec.status, rec.approvals) == ("pending", ["alice"])
        with pytest.raises(FederationError, match="alice has decided"):
            st.decide(env["job_id"], "alice", "approve")
        with pytest.raises(FederationError, match="comment"):
            st.decide(env["job_id"], "bob", "reject")
        assert st.unsealed() == []
        rec = st.decide(env["job_id"], "bob", "approve")
        assert rec.status == "approved" and rec.decided_at is not None
        with pytest.raises(FederationError, match="approved already"):
            st.decide(env["job_id"], "carol", "reject", "too late")
        assert st.unsealed() == [env["job_id"]]
        assert st.find_release(env["job_id"][:6]).job_id == env["job_id"]
        with pytest.raises(FederationError, match="Expected one held result"):
            st.find_release("nothing-like-it")
        body = st.seal_release(env["job_id"], lambda r, s: json.dumps(released_document(r, s)).encode())
        assert body is not None and st.seal_release(env["job_id"], lambda r, s: b"again") is None
        job = st.job(env["job_id"])
        assert job is not None and (job.state, job.upload, job.result) == ("succeeded", "pending", body)
        events = [e.event for e in st.audit_entries()]
        assert events[-4:] == ["release_approve", "release_approve", "released", "release_sealed"]
        assert st.verify_audit() == len(events)


def test_a_rejected_release_document_has_no_content(site: SiteFixture, tmp_path: Path) -> None:
    env = site.envelope()
    with RunnerState(tmp_path / "s.sqlite") as st:
        _held(st, env)
        rec = st.decide(env["job_id"], "alice", "reject", "a name in the output")
        section = {"first_seq": 1, "prev": GENESIS, "hashes": []}
        doc = released_document(rec, section)
    assert (doc["status"], doc["reason"], doc["outputs"], doc["records"]) == (
        "failed",
        "release_rejected",
        [],
        [],
    )
    assert "redactions" not in doc and "n=12" not in json.dumps(doc) and "alice" not in json.dumps(doc)
    assert doc["release"] == {"decision": "rejected", "stewards": 1, "decided_at": rec.decided_at}
    assert doc["provenance"] == {"version_hash": env["version_hash"], "audit": section}


def test_hold_reasons_come_from_the_policy_and_the_output_checks() -> None:
    ok = types.SimpleNamespace(status="succeeded")
    assert hold_reasons(SitePolicy(), "lung", ok) == []
    assert hold_reasons(SitePolicy(release_required=True), "lung", ok) == ["release_required"]
    assert hold_reasons(SitePolicy(release_studies=["lung"]), "lung", ok) == ["release_study"]
    assert hold_reasons(SitePolicy(release_studies=["lung"]), "heart", ok) == []
    checked = types.SimpleNamespace(
        status="succeeded",
        needs_release=True,
        release_reasons=[types.SimpleNamespace(reason="image"), "study"],
    )
    assert hold_reasons(SitePolicy(release_required=True), "x", checked) == [
        "release_required",
        "image",
        "study",
    ]
    flagged = types.SimpleNamespace(status="succeeded", needs_release=True)
    assert hold_reasons(SitePolicy(), "x", flagged) == ["disclosure"]
    failed = types.SimpleNamespace(status="failed", needs_release=True)
    assert hold_reasons(SitePolicy(release_required=True), "x", failed) == []  # nothing to release

    class Entry:
        def to_dict(self) -> dict[str, Any]:
            return {"rule": "identifier", "place": {"cell": 2}, "count": 1}

    assert redaction_report(types.SimpleNamespace(redactions=[Entry()]), {}) == [Entry().to_dict()]
    assert redaction_report(ok, {"redactions": [{"rule": "hex_blob"}]}) == [{"rule": "hex_blob"}]
    assert redaction_report(ok, {}) is None
    with pytest.raises(ValueError):
        SitePolicy(release_stewards=0)


def test_provenance_helpers(tmp_path: Path) -> None:
    assert (
        series_read(types.SimpleNamespace()) == []
        and series_read(types.SimpleNamespace(series_read="1.2")) == []
    )
    assert series_read(types.SimpleNamespace(series_read=("1.2", "1.3"))) == ["1.2", "1.3"]
    m = new_manifest(["1.3", "1.2", "1.3"])
    assert m.uids == ("1.2", "1.3") and len(m.salt) == 32 and m.to_dict()["series"] == 2
    assert new_manifest(["1.2"]).hashed != new_manifest(["1.2"]).hashed  # a fresh salt each time
    assert parameters_sha256({"b": 1, "a": 2}) == parameters_sha256({"a": 2, "b": 1})
    assert parameters_sha256("not an object") is None
    prov = provenance(None, None, None, None)
    assert prov["data"] == {"series": 0, "uids": [], "salt_sha256": None} and prov["environment"] is None
    spec = tmp_path / "k"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/usr/bin/bwrap", "--ro-bind", "/", "/", "/venv/bin/python3.11", "-m", "ipykernel_launcher"]}))  # fmt: skip
    assert kernel_python(spec) == Path("/venv/bin/python3.11")
    (spec / "kernel.json").write_text(
        json.dumps({"argv": ["/opt/kernel-wrapper", "-f", "{connection_file}"]})
    )
    assert kernel_python(spec) is None and kernel_python(tmp_path / "missing") is None


def test_a_held_job_leased_again_is_not_run_again(site: SiteFixture, fake: FakeCoordinator) -> None:
    site.policy = {"release_required": True, "allow_unisolated": True}
    env = site.envelope(parameters={"threshold": -7})
    fake.offer(env)
    with Runner(site.config(), transport=fake.transport(), rng=random.Random(0)) as r:
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.delivered) == (
            "held",
            False,
        )  # the fake has no /held
        rec = r.state.release(env["job_id"])
        assert rec is not None and (rec.notice, rec.attempt) == ("rejected", 1)
        again = site.envelope(parameters={"threshold": -7}, job_id=env["job_id"], attempt=2)
        fake.offer(again)
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.attempt) == ("held", 2)
        assert len(list((site.root / "runs").glob("*-a2-*"))) == 0  # not run again
        r.state.decide(env["job_id"], "alice", "approve")
        assert r.run_once(wait_s=0) is None  # signs the release, sends it, polls
    doc = result_of(fake.accepted[env["job_id"]])
    assert verify_document(doc, {site.key.key_id: site.key.public_b64}) == site.key.key_id
    assert (doc["attempt"], doc["status"], doc["release"]["decision"]) == (2, "succeeded", "approved")
    assert [rec["name"] for rec in doc["records"]] == ["patients", "volume_mean"]
    assert doc["provenance"]["parameters_sha256"] == parameters_sha256({"threshold": -7})


def test_show_prints_what_would_leave_and_saves_images(tmp_path: Path) -> None:
    import base64

    from jipkit.protocol.records import RECORD_MIME
    from jipkit.site.cli import _show_outputs

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode()
    record = {
        "schema": "jip.record/1",
        "name": "n",
        "kind": "count",
        "value": None,
        "suppressed": True,
        "of": "patients",
    }
    doc = {"outputs": [{"cell": 3, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
        {"output_type": "display_data", "data": {"image/png": png, "text/plain": "<Figure>"}},
        {"output_type": "display_data", "data": {RECORD_MIME: record, "text/plain": "[jip record] n"}},
        {"output_type": "execute_result", "data": {"text/html": "<table/>", "text/plain": "  x\n0 1"}},
    ]}]}  # fmt: skip
    text = "\n".join(_show_outputs(doc, tmp_path / "images"))
    assert "[stdout]\n      a\n      b" in text and "[record] n (count) = suppressed of=patients" in text
    assert (
        "[image/png] an image of about" in text
        and (tmp_path / "images" / "cell3-1.png").read_bytes()[:4] == b"\x89PNG"
    )
    assert "<Figure>" in text and "[text/html] 8 characters" in text and "x\n      0 1" in text
