"""The coordinator's state: one SQLite file in WAL mode.

Every state change is one ``BEGIN IMMEDIATE`` transaction that also appends its audit
entry, so a coordinator killed at any moment comes back with each run, job and result
either wholly there or not at all.  Times that decide something (leases, token and
enrol-token expiry) are ``REAL`` seconds of the coordinator's clock; times that are
shown are ISO 8601 UTC text.

Tables::

    users           id, username, password_hash (argon2), is_admin
    user_tokens     token_hash (SHA-256 of the API token), user_id, expires_at
    studies         name, review_quorum
    study_roles     (study, user_id, role)       role: scientist | reviewer | coordinator
    sites           name, token_hash (SHA-256), enrol_token_hash (SHA-256, one-time),
                    enrol_expires_at, public_key (pinned at enrolment), key_fingerprint
    study_sites     (study, site)                the sites that take part in a study
    notebook_versions  version_hash, study, author_id, title, canonical (JSON),
                    parameter_schema (JSON), state: pending | approved | rejected
    reviews         (version_hash, reviewer_id), decision, comment
    runs            run_id, study, version_hash, parameters (JSON), deadline_s, state:
                    running | done | cancelled
    jobs            job_id, run_id, site, state, attempt, lease_expires_at, reason,
                    envelope_sha256; state: queued | leased | held | succeeded | failed |
                    refused | declined | cancelled (held: the result waits at the site
                    for a data steward's release; no lease runs)
    results         job_id (one per job), attempt, status, document (the signed JSON
                    as received), doc_sha256, content_sha256 (without the signature)
    result_checks   job_id, audit_status (continuous | first | gap | break | missing),
                    audit_problem, audit_first_seq, audit_entries, audit_head: what the
                    coordinator found when it checked the result's audit section
    site_audit      (site, seq), hash, job_id: every site audit log entry hash a site's
                    results showed, to check the continuity of the next ones
    audit           id, at, actor, action, subject, data, prev_hash, hash (append-only:
                    triggers refuse UPDATE and DELETE)
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from jipkit.errors import ConfigError

__all__ = ["FINAL_JOB_STATES", "JOB_STATES", "SCHEMA_VERSION", "Database"]

SCHEMA_VERSION: Final = 2
JOB_STATES: Final = ("queued", "leased", "held", "succeeded", "failed", "refused", "declined", "cancelled")
FINAL_JOB_STATES: Final = ("succeeded", "failed", "refused", "declined", "cancelled")

_JOBS_COLUMNS: Final = """    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    site TEXT NOT NULL REFERENCES sites(name),
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'leased', 'held', 'succeeded', 'failed', 'refused', 'declined', 'cancelled')),
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL,
    envelope_sha256 TEXT,
    reason TEXT,
    updated_at TEXT NOT NULL"""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    review_quorum INTEGER NOT NULL CHECK (review_quorum >= 1),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS study_roles (
    study TEXT NOT NULL REFERENCES studies(name),
    user_id INTEGER NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('scientist', 'reviewer', 'coordinator')),
    PRIMARY KEY (study, user_id, role)
);
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    token_hash TEXT UNIQUE,
    enrol_token_hash TEXT,
    enrol_expires_at REAL,
    public_key TEXT,
    key_fingerprint TEXT,
    created_at TEXT NOT NULL,
    enrolled_at TEXT
);
CREATE TABLE IF NOT EXISTS study_sites (
    study TEXT NOT NULL REFERENCES studies(name),
    site TEXT NOT NULL REFERENCES sites(name),
    PRIMARY KEY (study, site)
);
CREATE TABLE IF NOT EXISTS notebook_versions (
    version_hash TEXT PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(name),
    author_id INTEGER NOT NULL REFERENCES users(id),
    title TEXT NOT NULL,
    canonical TEXT NOT NULL,
    parameter_schema TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    submitted_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notebook_versions_study ON notebook_versions (study);
CREATE TABLE IF NOT EXISTS reviews (
    version_hash TEXT NOT NULL REFERENCES notebook_versions(version_hash),
    reviewer_id INTEGER NOT NULL REFERENCES users(id),
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment TEXT NOT NULL,
    reviewed_at TEXT NOT NULL,
    PRIMARY KEY (version_hash, reviewer_id)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(name),
    version_hash TEXT NOT NULL REFERENCES notebook_versions(version_hash),
    parameters TEXT NOT NULL,
    deadline_s INTEGER NOT NULL,
    created_by INTEGER NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'cancelled')),
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
CREATE TABLE IF NOT EXISTS jobs (
{jobs_columns}
);
CREATE INDEX IF NOT EXISTS jobs_site_state ON jobs (site, state, id);
CREATE INDEX IF NOT EXISTS jobs_run_state ON jobs (run_id, state);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_expires_at);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
    attempt INTEGER NOT NULL,
    site TEXT NOT NULL,
    status TEXT NOT NULL,
    document TEXT NOT NULL,
    doc_sha256 TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS result_checks (
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
    audit_status TEXT NOT NULL CHECK (audit_status IN ('continuous', 'first', 'gap', 'break', 'missing')),
    audit_problem TEXT,
    audit_first_seq INTEGER,
    audit_entries INTEGER NOT NULL DEFAULT 0,
    audit_head TEXT
);
CREATE TABLE IF NOT EXISTS site_audit (
    site TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    job_id TEXT,
    PRIMARY KEY (site, seq)
);
""".replace("{jobs_columns}", _JOBS_COLUMNS)

_JOBS_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS jobs_site_state ON jobs (site, state, id);
CREATE INDEX IF NOT EXISTS jobs_run_state ON jobs (run_id, state);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_expires_at);
"""


class Database:
    """The coordinator's SQLite database: one connection, serialised by a lock.

    Parameters
    ----------
    path : path-like
        The database file; created (mode 600) with its schema when missing.
    synchronous : {"FULL", "NORMAL"}
        SQLite's ``synchronous`` pragma.  Either survives a killed process in WAL mode;
        FULL also survives power loss.

    Notes
    -----
    The service's statements are short; they run on the event loop's thread, or in
    worker threads for the handlers that do CPU work (password checks, parsing
    notebooks and results, the dashboard's pages), and the lock serialises them.  A
    transaction holds the lock only for its statements: parsing happens outside it.  Other
    processes (the ``jip coordinator`` admin commands) may write at the same time:
    WAL and ``BEGIN IMMEDIATE`` with a busy timeout serialise them.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"The coordinator's data folder {self.path.parent} does not exist. Run: jip coordinator init"
            )
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as err:
            raise ConfigError(f"Cannot open the coordinator database {self.path}: {err}.") from err
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) == 1:
                self._migrate_1_to_2()
            elif int(row[0]) != SCHEMA_VERSION:
                raise ConfigError(
                    f"The coordinator database {self.path} has schema version {row[0]}; this jipkit "
                    f"reads version {SCHEMA_VERSION}. Use the matching jipkit version."
                )

    def _migrate_1_to_2(self) -> None:
        """Version 2 adds the job state ``held`` (the tables of version 2 exist by now).

        SQLite cannot change a CHECK constraint: the jobs table is rebuilt, as its
        documentation describes (foreign keys off, copy, drop, rename, check, commit).
        """
        c = self._conn
        c.execute("PRAGMA foreign_keys=OFF")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                version = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
                if int(version) == 1:  # another process may have migrated meanwhile
                    c.execute(f"CREATE TABLE jobs_v2 ({_JOBS_COLUMNS})")
                    c.execute("INSERT INTO jobs_v2 SELECT * FROM jobs")
                    c.execute("DROP TABLE jobs")
                    c.execute("ALTER TABLE jobs_v2 RENAME TO jobs")
                    for stmt in filter(str.strip, _JOBS_INDEXES.split(";")):
                        c.execute(stmt)
                    if c.execute("PRAGMA foreign_key_check").fetchone() is not None:
                        raise ConfigError(
                            f"Migrating the coordinator database {self.path} to version 2 found broken "
                            "references; it is left at version 1. Restore it from a backup."
                        )
                    c.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                    )
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        finally:
            c.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across its statements."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        with self._lock:
            self._conn.close()
