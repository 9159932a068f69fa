"""The runner's local state in SQLite: jobs seen, local approvals, the site audit log.

Replay rule
-----------
The coordinator gives each (job, site) a job ID, and a new *attempt* number each time
it leases the job again (after a lease expired: the runner was killed, or lost its
connection).  The envelope is signed, so neither number can be changed in transit.
This site makes at most one decision per job ID and executes it at most to completion
once; :meth:`RunnerState.prior` classifies an envelope against what this site did before:

``NEW``
    The job ID was never seen here (with a valid signature and for this site): verify the
    rest and run it.
``RERUN``
    A run of this job started here and never finished (the runner was killed or stopped
    mid-job, so nothing was sent back), and the envelope carries a *higher* attempt: a
    re-lease after that crash.  Run it again.
``REDELIVER``
    This site finished (or refused) the job but the coordinator never acknowledged the
    result, and the envelope carries a higher attempt (the old lease expired while the
    upload was retried).  Do not run it again: send the stored result, re-signed for the
    new attempt.
``REPLAY``
    Anything else: the same or an older attempt again, a result already acknowledged,
    or the job ID reused for different work (another notebook, parameters, run, study or
    site).  Refused with reason ``replay``.

Only envelopes whose signature verified and that name this site are recorded: a forged
envelope cannot burn a job ID.  The runner records ``running`` durably *before* the
kernel starts, so a crash at any moment leaves a state that the rule above handles.

Audit log
---------
Every decision and state change is appended to ``audit``: each entry carries the SHA-256
of the previous one, and SQLite triggers refuse updates and deletes.
:meth:`RunnerState.verify_audit` walks the chain.  Entries hold IDs, hashes and reason
codes only: no parameters, messages or tracebacks.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jipkit.errors import FederationError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import utcnow_iso

__all__ = ["AuditEntry", "JobRecord", "Prior", "RunnerState", "job_digest"]

GENESIS: Final = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    digest TEXT NOT NULL,
    run_id TEXT,
    study TEXT,
    version_hash TEXT,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'refused')),
    reason TEXT,
    result BLOB,
    upload TEXT CHECK (upload IN ('pending', 'acknowledged', 'rejected')),
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    version_hash TEXT PRIMARY KEY,
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    job_id TEXT,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the site audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the site audit log is append-only'); END;
"""


class Prior(enum.Enum):
    """What this site did before with a job ID; see the module's replay rule."""

    NEW = "new"
    RERUN = "rerun"
    REDELIVER = "redeliver"
    REPLAY = "replay"


@dataclass(frozen=True)
class JobRecord:
    """One job as this site remembers it.

    Attributes
    ----------
    job_id, attempt : str, int
        The job and the latest attempt this site acted on.
    digest : str
        :func:`job_digest` of the envelope: what work the job ID stands for.
    state : str
        ``running``, ``succeeded``, ``failed`` or ``refused``.
    reason : str or None
        The refusal or failure reason code.
    result : bytes or None
        The signed result exactly as uploaded (retries send the same bytes).
    upload : str or None
        ``pending``, ``acknowledged`` or ``rejected`` (409/4xx: the coordinator will not take it).
    """

    job_id: str
    attempt: int
    digest: str
    run_id: str | None
    study: str | None
    version_hash: str | None
    state: str
    reason: str | None
    result: bytes | None
    upload: str | None


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the site audit log."""

    seq: int
    at: str
    event: str
    job_id: str | None
    detail: dict[str, Any]
    prev: str
    hash: str


def job_digest(envelope: Mapping[str, Any]) -> str:
    """SHA-256 of what a job ID stands for: run, study, site, version and parameters."""
    keys = ("run_id", "study", "site", "version_hash", "parameters")
    return sha256_hex(canonical_json({k: envelope.get(k) for k in keys}))


def _entry_hash(seq: int, at: str, event: str, job_id: str | None, detail: str, prev: str) -> str:
    body = {"seq": seq, "at": at, "event": event, "job_id": job_id, "detail": detail, "prev": prev}
    return sha256_hex(canonical_json(body))


class RunnerState:
    """The runner's SQLite database (one per site).

    Parameters
    ----------
    path : path-like
        The database file; created (with its folder) when missing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> RunnerState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # -- jobs ---------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        """What this site remembers of ``job_id``, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return JobRecord(
            job_id=row["job_id"],
            attempt=row["attempt"],
            digest=row["digest"],
            run_id=row["run_id"],
            study=row["study"],
            version_hash=row["version_hash"],
            state=row["state"],
            reason=row["reason"],
            result=row["result"],
            upload=row["upload"],
        )

    def prior(self, job_id: str, attempt: int, digest: str) -> Prior:
        """Classify an envelope by what this site did before (the module's replay rule)."""
        rec = self.job(job_id)
        if rec is None:
            return Prior.NEW
        if attempt <= rec.attempt or digest != rec.digest:
            return Prior.REPLAY
        if rec.state == "running":
            return Prior.RERUN
        if rec.upload in ("pending", "rejected"):
            return Prior.REDELIVER
        return Prior.REPLAY

    def start(self, envelope: Mapping[str, Any]) -> None:
        """Record, before the kernel starts, that this attempt of the job is running."""
        self._upsert(envelope, state="running", reason=None, result=None, upload=None)

    def finish(self, envelope: Mapping[str, Any], state: str, reason: str | None, result: bytes) -> None:
        """Record a final decision (a result or a refusal) and its signed bytes, to upload."""
        self._upsert(envelope, state=state, reason=reason, result=result, upload="pending")

    def _upsert(
        self,
        env: Mapping[str, Any],
        *,
        state: str,
        reason: str | None,
        result: bytes | None,
        upload: str | None,
    ) -> None:
        now = utcnow_iso()
        detail = {"attempt": env["attempt"], "version": env.get("version_hash"), "reason": reason}
        with self._tx() as db:
            self._append(db, state, env["job_id"], detail)
            db.execute(
                """INSERT INTO jobs (job_id, attempt, digest, run_id, study, version_hash, state, reason,
                                     result, upload, started_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (job_id) DO UPDATE SET attempt = excluded.attempt, state = excluded.state,
                       reason = excluded.reason, result = excluded.result, upload = excluded.upload,
                       updated_at = excluded.updated_at""",
                (
                    env["job_id"],
                    env["attempt"],
                    job_digest(env),
                    env.get("run_id"),
                    env.get("study"),
                    env.get("version_hash"),
                    state,
                    reason,
                    result,
                    upload,
                    now,
                    now,
                ),
            )

    def mark_upload(self, job_id: str, outcome: str) -> None:
        """Record the coordinator's answer to an upload: ``acknowledged`` or ``rejected``."""
        with self._tx() as db:
            self._append(db, f"upload_{outcome}", job_id, {})
            db.execute(
                "UPDATE jobs SET upload = ?, updated_at = ? WHERE job_id = ?", (outcome, utcnow_iso(), job_id)
            )

    def pending_uploads(self) -> list[JobRecord]:
        """Results made here that the coordinator has not answered yet (to send on start-up)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute("SELECT job_id FROM jobs WHERE upload = 'pending' ORDER BY rowid")
            ]
        return [rec for rec in map(self.job, ids) if rec is not None]

    def interrupted(self) -> list[JobRecord]:
        """Jobs that started here and never finished (the runner stopped or died mid-job)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute("SELECT job_id FROM jobs WHERE state = 'running' ORDER BY rowid")
            ]
        return [rec for rec in map(self.job, ids) if rec is not None]

    # -- local approval -----------------------------------------------------------------

    def approve(self, version_hash: str, approved_by: str, note: str = "") -> None:
        """Approve a notebook version for this site (when its policy asks for local approval)."""
        if len(version_hash) != 64 or any(c not in "0123456789abcdef" for c in version_hash):
            raise FederationError(
                f"Expected a version hash (64 lowercase hex digits), found {version_hash!r}."
            )
        with self._tx() as db:
            self._append(db, "approved", None, {"version": version_hash, "by": approved_by})
            db.execute(
                "INSERT OR REPLACE INTO approvals (version_hash, approved_by, approved_at, note) VALUES (?, ?, ?, ?)",
                (version_hash, approved_by, utcnow_iso(), note),
            )

    def is_approved(self, version_hash: str) -> bool:
        """Whether this site's operator approved ``version_hash``."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM approvals WHERE version_hash = ?", (version_hash,)
            ).fetchone()
        return row is not None

    # -- audit log ----------------------------------------------------------------------

    def audit(self, event: str, job_id: str | None = None, **detail: Any) -> AuditEntry:
        """Append an entry to the hash-chained site audit log (IDs and codes only)."""
        with self._tx() as db:
            return self._append(db, event, job_id, detail)

    @staticmethod
    def _append(db: sqlite3.Connection, event: str, job_id: str | None, detail: dict[str, Any]) -> AuditEntry:
        text = canonical_json(detail).decode()
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        at = utcnow_iso()
        digest = _entry_hash(seq, at, event, job_id, text, prev)
        db.execute(
            "INSERT INTO audit (seq, at, event, job_id, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, at, event, job_id, text, prev, digest),
        )
        return AuditEntry(seq, at, event, job_id, detail, prev, digest)

    def audit_entries(self) -> Iterator[AuditEntry]:
        """The site audit log, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        for r in rows:
            yield AuditEntry(
                r["seq"], r["at"], r["event"], r["job_id"], _loads(r["detail"]), r["prev"], r["hash"]
            )

    def verify_audit(self) -> int:
        """Check the audit log's hash chain; return its number of entries.

        Raises
        ------
        FederationError
            An entry was changed, removed or inserted out of order.
        """
        prev, n = GENESIS, 0
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        for r in rows:
            n += 1
            want = _entry_hash(r["seq"], r["at"], r["event"], r["job_id"], r["detail"], prev)
            if r["seq"] != n or r["prev"] != prev or r["hash"] != want:
                raise FederationError(
                    f"The site audit log {self.path} is broken at entry {r['seq']}: it was changed "
                    "after it was written. Keep the file for investigation and start a new state database."
                )
            prev = r["hash"]
        return n


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``), holding the state's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
