"""The runner's local state in SQLite: jobs seen, local approvals, held results, the audit log.

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
``HELD``
    This site ran the job and holds its result for a data steward's release (see below),
    and the envelope carries a higher attempt (the coordinator never learnt that the
    job is held, and leased it again).  Do not run it again: tell the coordinator that
    the new attempt holds it.
``REPLAY``
    Anything else: the same or an older attempt again, a result already acknowledged,
    or the job ID reused for different work (another notebook, parameters, run, study or
    site).  Refused with reason ``replay``.

Only envelopes whose signature verified and that name this site are recorded: a forged
envelope cannot burn a job ID.  The runner records ``running`` durably *before* the
kernel starts, so a crash at any moment leaves a state that the rule above handles.

Release queue
-------------
A result that needs a data steward's release is kept, unsigned, in ``releases`` (with
the reasons, the redaction report if any, and how many different stewards must
approve); its job's row has no result and no upload state until the release is decided.
:meth:`RunnerState.decide` records each steward's decision (``release_decisions``);
:meth:`RunnerState.seal_release` then stores the signed result (the released one, or a
``failed``/``release_rejected`` one without content) for upload like any other.

Provenance
----------
``notebooks`` keeps the canonical notebook of every version run here; ``manifests`` the
salt and the SeriesInstanceUIDs behind each result's salted data manifest
(:mod:`jipkit.site.provenance`).  :meth:`RunnerState.audit_section` gives the audit
entry hashes a result carries: those appended since the last result the coordinator
acknowledged (``audit_reports`` remembers which entries each result covered).

Audit log
---------
Every decision and state change is appended to ``audit``: each entry carries the SHA-256
of the previous one, and SQLite triggers refuse updates and deletes.
:meth:`RunnerState.verify_audit` walks the chain.  Entries hold IDs, hashes, reason
codes and stewards' names only: no parameters, messages, comments (their SHA-256) or
tracebacks.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jipkit.errors import FederationError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import utcnow_iso

__all__ = [
    "AuditEntry",
    "Decision",
    "JobRecord",
    "ManifestRecord",
    "Prior",
    "ReleaseRecord",
    "RunnerState",
    "job_digest",
]

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
CREATE TABLE IF NOT EXISTS audit_reports (
    job_id TEXT PRIMARY KEY,
    to_seq INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS notebooks (
    version_hash TEXT PRIMARY KEY,
    canonical TEXT NOT NULL,
    kept_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    job_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    salt TEXT NOT NULL,
    uids TEXT NOT NULL,
    salt_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    job_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    run_id TEXT,
    study TEXT,
    version_hash TEXT,
    document TEXT NOT NULL,
    reasons TEXT NOT NULL,
    redactions TEXT,
    stewards_needed INTEGER NOT NULL CHECK (stewards_needed >= 1),
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    notice TEXT NOT NULL DEFAULT 'pending' CHECK (notice IN ('pending', 'acknowledged', 'rejected')),
    held_at TEXT NOT NULL,
    decided_at TEXT
);
CREATE TABLE IF NOT EXISTS release_decisions (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES releases(job_id),
    steward TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    UNIQUE (job_id, steward)
);
"""


class Prior(enum.Enum):
    """What this site did before with a job ID; see the module's replay rule."""

    NEW = "new"
    RERUN = "rerun"
    REDELIVER = "redeliver"
    HELD = "held"
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
        The signed result exactly as uploaded (retries send the same bytes); None while
        the job runs or its result is held for release.
    upload : str or None
        ``pending``, ``acknowledged`` or ``rejected`` (409/4xx: the coordinator will not take it);
        None while the job runs or its result is held for release.
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


@dataclass(frozen=True)
class Decision:
    """One data steward's decision on a held result."""

    steward: str
    decision: str
    comment: str
    at: str


@dataclass(frozen=True)
class ReleaseRecord:
    """A result held at the site for a data steward's release.

    Attributes
    ----------
    document : dict
        The result document, not yet signed (no ``provenance.audit``, no ``release``).
    reasons : list of str
        Why it is held (``release_required``, ``release_study``, or the output checks'
        reasons such as ``image``).
    redactions : list of dict or None
        The output checks' redaction report, when they made one.
    stewards_needed : int
        How many different stewards must approve.
    status : str
        ``pending``, ``approved`` or ``rejected``.
    notice : str
        Whether the coordinator acknowledged that the job is held: ``pending``,
        ``acknowledged``, ``rejected``.
    sealed : bool
        Whether the decided result was signed and handed to the upload queue.
    """

    job_id: str
    attempt: int
    run_id: str | None
    study: str | None
    version_hash: str | None
    document: dict[str, Any]
    reasons: list[str]
    redactions: list[dict[str, Any]] | None
    stewards_needed: int
    status: str
    notice: str
    held_at: str
    decided_at: str | None
    decisions: list[Decision]
    sealed: bool

    @property
    def approvals(self) -> list[str]:
        """The stewards who approved, in order."""
        return [d.steward for d in self.decisions if d.decision == "approve"]


@dataclass(frozen=True)
class ManifestRecord:
    """The data behind a result's salted manifest, kept at the site only."""

    job_id: str
    attempt: int
    salt: bytes
    uids: list[str]
    salt_sha256: str
    created_at: str


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
        if rec.upload is None:  # it ran, and its result is held here for release
            return Prior.HELD
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
        detail = {"attempt": env["attempt"], "version": env.get("version_hash"), "reason": reason}
        with self._tx() as db:
            self._append(db, state, env["job_id"], detail)
            self._write_job(db, env, state=state, reason=reason, result=result, upload=upload)

    @staticmethod
    def _write_job(
        db: sqlite3.Connection,
        env: Mapping[str, Any],
        *,
        state: str,
        reason: str | None,
        result: bytes | None,
        upload: str | None,
    ) -> None:
        now = utcnow_iso()
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
            if outcome == "acknowledged":
                db.execute("UPDATE audit_reports SET acknowledged = 1 WHERE job_id = ?", (job_id,))

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

    # -- provenance ---------------------------------------------------------------------

    def keep_notebook(self, version_hash: str, canonical: Mapping[str, Any]) -> None:
        """Keep the canonical notebook of a version run here (once per version)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO notebooks (version_hash, canonical, kept_at) VALUES (?, ?, ?)",
                (version_hash, canonical_json(dict(canonical)).decode(), utcnow_iso()),
            )

    def notebook(self, version_hash: str) -> dict[str, Any] | None:
        """The canonical notebook of a version run here, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT canonical FROM notebooks WHERE version_hash = ?", (version_hash,)
            ).fetchone()
        return None if row is None else _loads(row[0])

    def keep_manifest(
        self, job_id: str, attempt: int, salt: bytes, uids: Sequence[str], salt_sha256: str
    ) -> None:
        """Keep the salt and the SeriesInstanceUIDs behind a result's salted data manifest."""
        with self._tx() as db:
            self._append(
                db, "manifest", job_id, {"attempt": attempt, "series": len(uids), "salt_sha256": salt_sha256}
            )
            db.execute(
                "INSERT OR REPLACE INTO manifests (job_id, attempt, salt, uids, salt_sha256, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, salt.hex(), json.dumps(list(uids)), salt_sha256, utcnow_iso()),
            )

    def manifest(self, job_id: str) -> ManifestRecord | None:
        """The salt and UIDs behind ``job_id``'s result, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM manifests WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        uids = json.loads(row["uids"])
        return ManifestRecord(
            row["job_id"],
            row["attempt"],
            bytes.fromhex(row["salt"]),
            [str(u) for u in uids] if isinstance(uids, list) else [],
            row["salt_sha256"],
            row["created_at"],
        )

    def audit_section(self, job_id: str | None, *, record: bool = True) -> dict[str, Any]:
        """The audit entries a result carries: those after the last acknowledged result's.

        Parameters
        ----------
        job_id : str or None
            The result's job.
        record : bool
            Remember that ``job_id``'s result covers the log up to now, so that once the
            coordinator acknowledges it the next result starts after it.  False for
            results not recorded against their job ID (refusals of forged envelopes).

        Returns
        -------
        dict
            ``{first_seq, prev, hashes}``: the hash of entry ``first_seq - 1`` (64 zeros
            for none), then the hashes of entries ``first_seq`` onwards.
        """
        with self._tx() as db:
            return self._audit_section(db, job_id, record=record)

    @staticmethod
    def _audit_section(db: sqlite3.Connection, job_id: str | None, *, record: bool) -> dict[str, Any]:
        marker = db.execute("SELECT max(to_seq) FROM audit_reports WHERE acknowledged = 1").fetchone()[0]
        last = db.execute("SELECT max(seq) FROM audit").fetchone()[0] or 0
        start = min(int(marker or 0), last)  # a log shorter than what was reported: from its end
        row = db.execute("SELECT hash FROM audit WHERE seq = ?", (start,)).fetchone() if start else None
        prev = GENESIS if start == 0 else (row[0] if row is not None else "f" * 64)
        hashes = [r[0] for r in db.execute("SELECT hash FROM audit WHERE seq > ? ORDER BY seq", (start,))]
        if record and job_id is not None:
            db.execute(
                "INSERT OR REPLACE INTO audit_reports (job_id, to_seq, acknowledged) VALUES (?, ?, 0)",
                (job_id, last),
            )
        return {"first_seq": start + 1, "prev": prev, "hashes": hashes}

    # -- release queue ------------------------------------------------------------------

    def hold(
        self,
        envelope: Mapping[str, Any],
        status: str,
        reason: str | None,
        document: Mapping[str, Any],
        *,
        reasons: Sequence[str],
        redactions: Sequence[Mapping[str, Any]] | None,
        stewards_needed: int,
    ) -> None:
        """Hold a result (unsigned) for a data steward's release, instead of uploading it."""
        now = utcnow_iso()
        job_id, attempt = envelope["job_id"], envelope["attempt"]
        with self._tx() as db:
            self._append(
                db,
                "held",
                job_id,
                {"attempt": attempt, "reasons": list(reasons), "stewards_needed": stewards_needed},
            )
            self._write_job(db, envelope, state=status, reason=reason, result=None, upload=None)
            db.execute("DELETE FROM release_decisions WHERE job_id = ?", (job_id,))
            db.execute(
                """INSERT OR REPLACE INTO releases (job_id, attempt, run_id, study, version_hash, document,
                       reasons, redactions, stewards_needed, status, notice, held_at, decided_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 'pending', ?, NULL)""",
                (
                    job_id,
                    attempt,
                    envelope.get("run_id"),
                    envelope.get("study"),
                    envelope.get("version_hash"),
                    canonical_json(dict(document)).decode(),
                    json.dumps(list(reasons)),
                    None if redactions is None else json.dumps([dict(r) for r in redactions]),
                    stewards_needed,
                    now,
                ),
            )

    def held_again(self, envelope: Mapping[str, Any]) -> None:
        """A held job was leased again (a newer attempt): that attempt now holds it."""
        job_id, attempt = envelope["job_id"], envelope["attempt"]
        with self._tx() as db:
            self._append(db, "held_again", job_id, {"attempt": attempt})
            db.execute(
                "UPDATE jobs SET attempt = ?, updated_at = ? WHERE job_id = ?",
                (attempt, utcnow_iso(), job_id),
            )
            db.execute(
                "UPDATE releases SET attempt = ?, notice = 'pending' WHERE job_id = ?", (attempt, job_id)
            )

    def mark_held_notice(self, job_id: str, outcome: str) -> None:
        """Record the coordinator's answer to "held": ``acknowledged`` or ``rejected``."""
        with self._tx() as db:
            self._append(db, f"held_notice_{outcome}", job_id, {})
            db.execute("UPDATE releases SET notice = ? WHERE job_id = ?", (outcome, job_id))

    def release(self, job_id: str) -> ReleaseRecord | None:
        """The held result of ``job_id`` (pending or decided), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.*, j.upload AS upload FROM releases r LEFT JOIN jobs j ON j.job_id = r.job_id "
                "WHERE r.job_id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            decisions = [
                Decision(d["steward"], d["decision"], d["comment"], d["at"])
                for d in self._db.execute(
                    "SELECT * FROM release_decisions WHERE job_id = ? ORDER BY id", (job_id,)
                )
            ]
        redactions = json.loads(row["redactions"]) if row["redactions"] is not None else None
        return ReleaseRecord(
            job_id=row["job_id"],
            attempt=row["attempt"],
            run_id=row["run_id"],
            study=row["study"],
            version_hash=row["version_hash"],
            document=_loads(row["document"]),
            reasons=[str(r) for r in json.loads(row["reasons"])],
            redactions=redactions if isinstance(redactions, list) else None,
            stewards_needed=row["stewards_needed"],
            status=row["status"],
            notice=row["notice"],
            held_at=row["held_at"],
            decided_at=row["decided_at"],
            decisions=decisions,
            sealed=row["upload"] is not None,
        )

    def releases(self, status: str | None = None) -> list[ReleaseRecord]:
        """Held results, oldest first (only those of ``status`` when given)."""
        args: tuple[str, ...]
        sql, args = "SELECT job_id FROM releases", ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        with self._lock:
            ids = [r[0] for r in self._db.execute(sql + " ORDER BY held_at, job_id", args)]
        return [rec for rec in map(self.release, ids) if rec is not None]

    def _resolve(self, table: str, ref: str, what: str, hint: str) -> str:
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    f"SELECT job_id FROM {table} WHERE job_id = ? OR substr(job_id, 1, ?) = ?",
                    (ref, len(ref), ref),
                )
            ]
        if ref in ids:
            return ref
        if len(ids) != 1 or not ref:
            found = "none" if not ids else f"{len(ids)}: {', '.join(sorted(ids)[:5])}"
            raise FederationError(
                f"Expected one {what} whose job ID starts with {ref!r}, found {found}. {hint}"
            )
        return str(ids[0])

    def find_release(self, ref: str) -> ReleaseRecord:
        """The held result whose job ID is ``ref`` or starts with it (unique).

        Raises
        ------
        FederationError
            None or several match.
        """
        rec = self.release(
            self._resolve("releases", ref, "held result", "See `jip site release list --all`.")
        )
        assert rec is not None
        return rec

    def find_job(self, ref: str) -> JobRecord:
        """The job whose ID is ``ref`` or starts with it (unique).

        Raises
        ------
        FederationError
            None or several match.
        """
        rec = self.job(self._resolve("jobs", ref, "job of this site", "See `jip site audit`."))
        assert rec is not None
        return rec

    def decide(self, job_id: str, steward: str, decision: str, comment: str = "") -> ReleaseRecord:
        """Record a data steward's decision on a held result.

        Approvals from ``stewards_needed`` different stewards release it; one rejection
        rejects it.  Each decision is in the site audit log (the comment as its SHA-256).

        Parameters
        ----------
        decision : {"approve", "reject"}
        comment : str
            Why; required to reject.

        Raises
        ------
        FederationError
            No such held result, already decided, a steward deciding twice, no steward
            name, or a rejection without a comment.
        """
        steward = steward.strip()
        if decision not in ("approve", "reject"):
            raise FederationError(f"Expected the decision approve or reject, found {decision!r}.")
        if not steward:
            raise FederationError("A release decision needs the steward's name (--by NAME).")
        if decision == "reject" and not comment.strip():
            raise FederationError("A rejection needs a comment saying why (--comment TEXT).")
        now = utcnow_iso()
        with self._tx() as db:
            row = db.execute("SELECT * FROM releases WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise FederationError(f"No held result for job {job_id}. See `jip site release list`.")
            if row["status"] != "pending":
                raise FederationError(f"The result of job {job_id} was {row['status']} already.")
            prior = db.execute(
                "SELECT decision FROM release_decisions WHERE job_id = ? AND steward = ?", (job_id, steward)
            ).fetchone()
            if prior is not None:
                raise FederationError(
                    f"{steward} has decided on job {job_id} already ({prior[0]}): "
                    f"{row['stewards_needed']} different stewards must approve it."
                )
            detail = {
                "attempt": row["attempt"],
                "by": steward,
                "comment_sha256": sha256_hex(comment.encode("utf-8")),
            }
            self._append(db, f"release_{decision}", job_id, detail)
            db.execute(
                "INSERT INTO release_decisions (job_id, steward, decision, comment, at) VALUES (?, ?, ?, ?, ?)",
                (job_id, steward, decision, comment, now),
            )
            approvals = db.execute(
                "SELECT count(*) FROM release_decisions WHERE job_id = ? AND decision = 'approve'", (job_id,)
            ).fetchone()[0]
            status = (
                "rejected"
                if decision == "reject"
                else "approved"
                if approvals >= row["stewards_needed"]
                else None
            )
            if status is not None:
                self._append(
                    db,
                    "released" if status == "approved" else "release_rejected",
                    job_id,
                    {"attempt": row["attempt"]},
                )
                db.execute(
                    "UPDATE releases SET status = ?, decided_at = ? WHERE job_id = ?", (status, now, job_id)
                )
        rec = self.release(job_id)
        assert rec is not None
        return rec

    def unsealed(self) -> list[str]:
        """Jobs whose held result was decided but not yet signed for upload."""
        with self._lock:
            return [
                r[0]
                for r in self._db.execute(
                    "SELECT r.job_id FROM releases r JOIN jobs j ON j.job_id = r.job_id "
                    "WHERE r.status IN ('approved', 'rejected') AND j.upload IS NULL AND j.state != 'running' "
                    "ORDER BY r.decided_at"
                )
            ]

    def seal_release(
        self, job_id: str, sign: Callable[[ReleaseRecord, dict[str, Any]], bytes]
    ) -> bytes | None:
        """Sign a decided release and queue it for upload, in one transaction.

        Parameters
        ----------
        sign : callable
            ``sign(release, audit_section)``: the signed result's bytes.

        Returns
        -------
        bytes or None
            The signed result; None when it is not decided or was sealed already (by
            another process: the runner and ``jip site release`` may both try).
        """
        rec = self.release(job_id)
        if rec is None or rec.status == "pending":
            return None
        with self._tx() as db:
            job = db.execute("SELECT state, upload FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if job is None or job["upload"] is not None or job["state"] == "running":
                return None
            section = self._audit_section(db, job_id, record=True)
            body = sign(rec, section)
            approved = rec.status == "approved"
            state = str(rec.document.get("status")) if approved else "failed"
            reason = rec.document.get("reason") if approved else "release_rejected"
            self._append(db, "release_sealed", job_id, {"attempt": rec.attempt, "decision": rec.status})
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, result = ?, upload = 'pending', attempt = ?, "
                "updated_at = ? WHERE job_id = ?",
                (state, reason, body, rec.attempt, utcnow_iso(), job_id),
            )
        return body

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
