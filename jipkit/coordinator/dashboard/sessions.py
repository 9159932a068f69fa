"""Dashboard sessions: a random token in a cookie, its SHA-256 in the coordinator's database.

A session is made at login and lives :data:`SESSION_TTL_S` seconds (or until logout).
The cookie holds the token; the database keeps only its SHA-256 (table
``dashboard_sessions``, made here when missing), so a copy of the database opens no
session, and sessions survive a restart and are shared by every worker on the file.

Each session has a CSRF token: an HMAC of the session token, so it needs no storage,
cannot be computed without the cookie, and reveals nothing about it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from jipkit.coordinator.access import User
from jipkit.coordinator.base import iso, sha256_text
from jipkit.coordinator.db import Database

__all__ = ["SESSION_TTL_S", "Session", "SessionStore", "csrf_token"]

SESSION_TTL_S: Final = 8 * 3600.0
"""How long a dashboard session lasts (a working day); log in again after."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dashboard_sessions_expiry ON dashboard_sessions (expires_at);
"""


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 of a fixed label keyed by the session token."""
    return hmac.new(session_token.encode(), b"jip-dashboard-csrf/1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    """A logged-in dashboard user.

    Attributes
    ----------
    user : User
    csrf : str
        The token every form of this session carries (see :func:`csrf_token`).
    """

    user: User
    csrf: str


class SessionStore:
    """Create, find and end dashboard sessions in the coordinator's database.

    Parameters
    ----------
    db : Database
        The coordinator's database (its ``users`` table is joined).
    clock : callable
        Seconds since the epoch (the service's clock).
    ttl_s : float
        A session's lifetime.
    """

    def __init__(self, db: Database, clock: Callable[[], float], ttl_s: float = SESSION_TTL_S) -> None:
        self.db = db
        self.clock = clock
        self.ttl_s = ttl_s
        with self.db.write() as c:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                c.execute(stmt)

    def create(self, user: User) -> str:
        """A new session for ``user``; returns its token (for the cookie only).

        Expired sessions of every user are removed on the way.
        """
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.write() as c:
            c.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))
            c.execute(
                "INSERT INTO dashboard_sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (sha256_text(token), user.id, iso(now), now + self.ttl_s),
            )
        return token

    def find(self, token: str | None) -> Session | None:
        """The session of a cookie's token; None when unknown, expired or malformed."""
        if not token or len(token) > 100:
            return None
        with self.db.read() as c:
            row = c.execute(
                "SELECT u.id, u.username, u.is_admin FROM dashboard_sessions s JOIN users u ON u.id = s.user_id "
                "WHERE s.token_hash = ? AND s.expires_at > ?",
                (sha256_text(token), self.clock()),
            ).fetchone()
        if row is None:
            return None
        return Session(User(row["id"], row["username"], bool(row["is_admin"])), csrf_token(token))

    def end(self, token: str | None) -> None:
        """End the session of this token (logout); nothing when there is none."""
        if token:
            with self.db.write() as c:
                c.execute("DELETE FROM dashboard_sessions WHERE token_hash = ?", (sha256_text(token),))
