"""Users, their passwords and API tokens, bearer-token authentication, and study roles."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from jipkit.coordinator import audit
from jipkit.coordinator.access import ROLES, Principal, SitePrincipal, User, refused, require_admin, study_row
from jipkit.coordinator.base import ServiceBase, check_name, iso, sha256_text

__all__ = ["SITE_TOKEN_PREFIX", "AccountsMixin"]

_MIN_PASSWORD = 10
_USER_TOKEN_PREFIX = "jipu_"
SITE_TOKEN_PREFIX: Final = "jips_"
"""How site tokens begin (they are issued at enrolment, :mod:`jipkit.coordinator.studies`)."""


class AccountsMixin(ServiceBase):
    """Users, logins and tokens, and who holds which role in a study."""

    _hasher: PasswordHasher
    _dummy: str | None

    def create_user(
        self, username: str, password: str, *, admin: bool = False, actor: str = "admin-cli"
    ) -> User:
        """Create a user with an argon2-hashed password.

        Raises
        ------
        CoordinatorError
            ``name_invalid``, ``password_weak``, or ``exists``.
        """
        check_name("user", username)
        if len(password) < _MIN_PASSWORD:
            raise refused(
                400, "password_weak", f"Expected a password of at least {_MIN_PASSWORD} characters."
            )
        digest = self._hasher.hash(password)
        with self.db.write() as c:
            if c.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise refused(409, "exists", f"A user named {username!r} exists already.")
            cur = c.execute(
                "INSERT INTO users (username, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (username, digest, int(admin), iso(self._clock())),
            )
            audit.append(c, actor, "user", username, {"admin": admin})
        return User(int(cur.lastrowid or 0), username, admin)

    def has_admin(self) -> bool:
        """Whether any admin exists (``create-admin`` makes only the first)."""
        with self.db.read() as c:
            return c.execute("SELECT 1 FROM users WHERE is_admin = 1 LIMIT 1").fetchone() is not None

    def get_user(self, username: str) -> User | None:
        """The user named ``username``, if any."""
        with self.db.read() as c:
            row = c.execute(
                "SELECT id, username, is_admin FROM users WHERE username = ?", (username,)
            ).fetchone()
        return User(row["id"], row["username"], bool(row["is_admin"])) if row else None

    def login(self, username: str, password: str) -> str:
        """Check a password and issue a new API token (shown once; only its SHA-256 is kept).

        Slow on purpose (argon2): call it off the event loop.

        Raises
        ------
        CoordinatorError
            ``login_failed`` (401) for an unknown user or a wrong password alike.
        """
        row, stored = self._check_password(username, password)
        token = _USER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self.db.write() as c:
            if self._hasher.check_needs_rehash(stored):
                c.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ?",
                    (self._hasher.hash(password), row["id"]),
                )
            c.execute(
                "INSERT INTO user_tokens (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (sha256_text(token), row["id"], iso(now), now + self.config.token_ttl_s),
            )
        return token

    def _check_password(self, username: str, password: str) -> tuple[sqlite3.Row, str]:
        """The user's row and stored hash when ``password`` is theirs; 401 ``login_failed`` otherwise."""
        with self.db.read() as c:
            row = c.execute(
                "SELECT id, username, is_admin, password_hash FROM users WHERE username = ?", (username,)
            ).fetchone()
        if row is None and self._dummy is None:  # an unknown user costs one hash too: no timing oracle
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        stored = row["password_hash"] if row else self._dummy
        assert stored is not None
        try:
            self._hasher.verify(stored, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            raise refused(401, "login_failed", "Wrong username or password.")
        return row, stored

    def verify_password(self, username: str, password: str) -> User:
        """The user whose password this is, without issuing a token (the dashboard's login).

        Slow on purpose (argon2): call it off the event loop.  Rehashes a password whose
        hash used older argon2 parameters, as :meth:`login` does.

        Raises
        ------
        CoordinatorError
            ``login_failed`` (401) for an unknown user or a wrong password alike.
        """
        row, stored = self._check_password(username, password)
        if self._hasher.check_needs_rehash(stored):
            with self.db.write() as c:
                c.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ?",
                    (self._hasher.hash(password), row["id"]),
                )
        return User(row["id"], row["username"], bool(row["is_admin"]))

    def authenticate(self, token: str) -> Principal | None:
        """The user or site a bearer token belongs to; None for an unknown or expired one."""
        digest = sha256_text(token)
        with self.db.read() as c:
            if token.startswith(SITE_TOKEN_PREFIX):
                row = c.execute("SELECT name FROM sites WHERE token_hash = ?", (digest,)).fetchone()
                return SitePrincipal(row["name"]) if row else None
            row = c.execute(
                "SELECT u.id, u.username, u.is_admin FROM user_tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.token_hash = ? AND t.expires_at > ?",
                (digest, self._clock()),
            ).fetchone()
        return User(row["id"], row["username"], bool(row["is_admin"])) if row else None

    def grant_role(self, study: str, username: str, role: str, *, caller: Principal | None = None) -> None:
        """Give a user a role in a study (admins only; ``caller=None`` is the local admin CLI).

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``role_invalid``, ``not_found``.
        """
        actor = require_admin(caller)
        if role not in ROLES:
            raise refused(400, "role_invalid", f"Expected a role among {', '.join(ROLES)}, found {role!r}.")
        with self.db.write() as c:
            study_row(c, study)
            row = c.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                raise refused(
                    404, "not_found", f"No user named {username!r}. Create it: jip coordinator add-user"
                )
            cur = c.execute("INSERT OR IGNORE INTO study_roles VALUES (?, ?, ?)", (study, row["id"], role))
            if cur.rowcount:
                audit.append(c, actor, "role", study, {"user": username, "role": role})
