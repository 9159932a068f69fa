"""The runner's state: the replay rule, upload states, approvals, the hash-chained audit log."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from jipkit.errors import FederationError
from jipkit.site.state import Prior, RunnerState, job_digest
from tests.site.conftest import SiteFixture


def test_the_replay_rule(site: SiteFixture, tmp_path: Path) -> None:
    env = site.envelope()
    job, digest = env["job_id"], job_digest(env)
    with RunnerState(tmp_path / "s.sqlite") as st:
        assert st.prior(job, 1, digest) is Prior.NEW
        st.start(env)
        assert st.prior(job, 1, digest) is Prior.REPLAY  # the same attempt again
        assert st.prior(job, 2, digest) is Prior.RERUN  # re-leased after a crash mid-job
        assert st.prior(job, 2, "0" * 64) is Prior.REPLAY  # the job ID reused for other work
        st.finish(env, "succeeded", None, b"signed")
        assert st.prior(job, 2, digest) is Prior.REDELIVER  # finished, not acknowledged
        st.mark_upload(job, "rejected")  # 409: the attempt's lease had expired
        assert st.prior(job, 2, digest) is Prior.REDELIVER
        st.mark_upload(job, "acknowledged")
        assert st.prior(job, 2, digest) is Prior.REPLAY  # done: never again
        assert st.prior(job, 9, digest) is Prior.REPLAY


def test_the_state_survives_a_restart(site: SiteFixture, tmp_path: Path) -> None:
    env = site.envelope()
    with RunnerState(tmp_path / "s.sqlite") as st:
        st.start(env)
    with RunnerState(tmp_path / "s.sqlite") as st:
        assert [r.job_id for r in st.interrupted()] == [env["job_id"]]
        st.finish(env, "failed", "kernel_died", b"bytes")
        assert [(r.job_id, r.result) for r in st.pending_uploads()] == [(env["job_id"], b"bytes")]
    with RunnerState(tmp_path / "s.sqlite") as st:
        rec = st.job(env["job_id"])
        assert rec is not None and (rec.state, rec.reason, rec.upload) == ("failed", "kernel_died", "pending")
        assert st.interrupted() == []


def test_local_approvals(tmp_path: Path) -> None:
    with RunnerState(tmp_path / "s.sqlite") as st:
        h = "ab" * 32
        assert not st.is_approved(h)
        st.approve(h, "operator", "read it")
        assert st.is_approved(h)
        with pytest.raises(FederationError, match="64 lowercase hex"):
            st.approve("not-a-hash", "operator")


def test_the_audit_log_is_chained_and_append_only(site: SiteFixture, tmp_path: Path) -> None:
    env = site.envelope(parameters={"threshold": 1})
    path = tmp_path / "s.sqlite"
    with RunnerState(path) as st:
        st.start(env)
        st.finish(env, "succeeded", None, b"x")
        st.mark_upload(env["job_id"], "acknowledged")
        st.audit("refused", "other-job", reason="expired")
        assert st.verify_audit() == 4
        entries = list(st.audit_entries())
        assert [e.event for e in entries] == ["running", "succeeded", "upload_acknowledged", "refused"]
        assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
        assert "threshold" not in str(entries)  # parameters stay out of the log
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET event = 'nothing' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 4")
    db.execute("DROP TRIGGER audit_no_update")  # someone with the file can still edit it ...
    db.execute("UPDATE audit SET event = 'nothing' WHERE seq = 2")
    db.commit()
    db.close()
    with RunnerState(path) as st, pytest.raises(FederationError, match="broken at entry 2"):
        st.verify_audit()  # ... but not without breaking the chain
