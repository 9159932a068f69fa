"""The coordinator's rules, without HTTP: who may do what, reviews, runs, leases, results.

Every method that changes state does it in one database transaction together with its
audit entry.  Every method a person or a site calls takes the caller
(:class:`User` or :class:`SitePrincipal`) and checks its role first.  Refusals raise
:class:`~jipkit.errors.CoordinatorError` with an HTTP ``status`` and a fixed ``reason``
(see :data:`REASONS`), or :class:`~jipkit.errors.ParameterError` /
:class:`~jipkit.errors.NotebookError` for a notebook or parameters that do not fit.

Jobs
----
A run makes one ``queued`` job per target site.  A site's claim takes its oldest queued
job: the attempt number goes up by one, that attempt holds a lease of ``lease_s``
seconds by this coordinator's clock, and the envelope (with the attempt in it) is
signed then.  A lease that runs out puts the job back in the queue, and after
``max_attempts`` expired leases the job fails with reason ``lease_expired``.  A result
is accepted only from the attempt that holds an unexpired lease, once: the same result
again is acknowledged as a duplicate, a different one refused (409).

::

    queued --claim--> leased --result--> succeeded | failed | refused
      ^                 |  \\--decline--> declined
      '--lease expiry---'   \\--lease expiry after max_attempts--> failed (lease_expired)
    queued | leased --cancel--> cancelled
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from jipkit.coordinator import audit
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.db import Database
from jipkit.errors import ConfigError, CoordinatorError, NotebookError, ParameterError, SignatureError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import (
    FAILURE_REASONS,
    JOB_TYPE,
    REFUSAL_REASONS,
    RESULT_STATUSES,
    RESULT_TYPE,
    builtin_exception_name,
)
from jipkit.protocol.notebook import canonical_notebook, check_parameters, parameter_schema, version_hash
from jipkit.protocol.records import validate_record
from jipkit.protocol.signing import SigningKey, fingerprint, key_id, sign_document, verify_document

__all__ = [
    "LEASE_EXPIRED",
    "REASONS",
    "ROLES",
    "Claim",
    "EnrolTicket",
    "Service",
    "SitePrincipal",
    "User",
    "refused",
]

log = logging.getLogger(__name__)

ROLES: Final = ("scientist", "reviewer", "coordinator")
"""Per-study roles.  ``admin`` is global (``users.is_admin``)."""

LEASE_EXPIRED: Final = "lease_expired"
"""The failure reason of a job whose lease expired ``max_attempts`` times."""

REASONS: Final = {
    "unauthenticated": "401: no bearer token, or an unknown or expired one",
    "login_failed": "401: wrong username or password",
    "enrol_token_invalid": "401: unknown site, or an enrol token that is wrong, used or expired",
    "forbidden": "403: the caller's role does not allow this",
    "self_review": "403: the author of a version cannot review it",
    "wrong_site": "403: the job belongs to another site, or the result names another site",
    "not_found": "404: no such study, user, site, notebook version, run or job",
    "request_invalid": "400/422: a request body that does not follow the API",
    "request_too_large": "413: a result over max_result_bytes",
    "name_invalid": "400: a name is not letters, digits and _.- (at most 64)",
    "password_weak": "400: a password shorter than 10 characters",
    "role_invalid": "400: not one of scientist, reviewer, coordinator",
    "public_key_invalid": "400: not an Ed25519 public key (32 bytes, base64)",
    "site_not_in_study": "400: a target site does not take part in the study",
    "deadline_invalid": "400: deadline_s out of range",
    "reason_invalid": "400: a decline reason that is not a refusal reason code",
    "result_invalid": "400: a result that does not follow the jip.result/1 format",
    "signature_invalid": "400: a result whose signature does not verify against the pinned key",
    "unknown_key": "400: a result signed by a key other than the site's pinned key",
    "exists": "409: a user or study of that name exists",
    "version_in_other_study": "409: this exact notebook is a version of another study",
    "not_approved": "409: the version is not approved (pending or rejected)",
    "lease_lost": "409: the attempt does not hold the job's lease (expired, or a newer attempt)",
    "cancelled": "409: the run was cancelled",
    "result_conflict": "409: a different result was accepted first",
    "run_final": "409: the run has finished",
    "notebook_invalid": "400: the notebook is malformed (NotebookError)",
    "parameters_invalid": "400: unknown parameter names or wrong JSON types (ParameterError)",
}
"""Reason codes of the coordinator's refusals, with their HTTP status."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MIN_PASSWORD = 10
_USER_TOKEN_PREFIX = "jipu_"
_SITE_TOKEN_PREFIX = "jips_"
_ENROL_TOKEN_PREFIX = "jipe_"


def refused(status: int, reason: str, message: str) -> CoordinatorError:
    """A :class:`CoordinatorError` with an HTTP status and a reason code from :data:`REASONS`."""
    err = CoordinatorError(message, status)
    err.reason = reason
    return err


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise refused(
            400,
            "name_invalid",
            f"Expected a {kind} name of letters, digits and _.- (at most 64), found {name!r}.",
        )
    return name


@dataclass(frozen=True)
class User:
    """A person calling the coordinator."""

    id: int
    username: str
    is_admin: bool = False

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"user:{self.username}"


@dataclass(frozen=True)
class SitePrincipal:
    """A site's runner calling the coordinator with its site token."""

    name: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"site:{self.name}"


Principal = User | SitePrincipal


@dataclass(frozen=True)
class EnrolTicket:
    """What ``add-site`` hands to a site's operator (out of band).

    Attributes
    ----------
    site : str
    enrol_token : str or None
        The one-time enrol token, shown once; None when the site existed and no new
        token was asked for.
    expires_at : str or None
    coordinator_key_id, coordinator_fingerprint : str
        What the site pins and compares.
    """

    site: str
    enrol_token: str | None
    expires_at: str | None
    coordinator_key_id: str
    coordinator_fingerprint: str


@dataclass(frozen=True)
class Claim:
    """A claimed job: the signed envelope and the lease's end (coordinator clock)."""

    envelope: dict[str, Any]
    lease_expires_at: str


class Service:
    """The coordinator's logic over its database and signing key.

    Parameters
    ----------
    db : Database
    key : SigningKey
        The key that signs job envelopes.
    config : CoordinatorConfig
    clock : callable, optional
        Seconds since the epoch; leases and expiry follow this clock only.
    """

    def __init__(
        self,
        db: Database,
        key: SigningKey,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.key = key
        self.config = config
        self._clock = clock
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._dummy: str | None = None
        self._notebooks: dict[str, dict[str, Any]] = {}

    @classmethod
    def open(cls, config: CoordinatorConfig) -> Service:
        """The service for a configured coordinator (its database and key file).

        Raises
        ------
        ConfigError
            The data folder, database or key is missing or unusable: run
            ``jip coordinator init``.
        """
        if not config.key_file.exists():
            raise ConfigError(
                f"No coordinator signing key at {config.key_file}. Run: jip coordinator init"
                + (f" -c {config.path}" if config.path else "")
            )
        key = SigningKey.load(config.key_file)
        return cls(Database(config.database_file, synchronous=config.sqlite_synchronous), key, config)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # ------------------------------------------------------------------ keys, audit

    def public_keys(self) -> dict[str, str]:
        """``{key_id: public_key_base64}`` of the keys that sign envelopes."""
        return {self.key.key_id: self.key.public_b64}

    def verify_audit(self) -> audit.ChainCheck:
        """Check the audit log's hash chain (see :func:`jipkit.coordinator.audit.verify_chain`)."""
        with self.db.read() as c:
            return audit.verify_chain(c)

    def _audit_refusal(self, actor: str, subject: str, err: CoordinatorError | NotebookError) -> None:
        with self.db.write() as c:
            audit.append(c, actor, "refusal", subject, {"reason": err.reason})

    # ------------------------------------------------------------------ users, tokens

    def create_user(
        self, username: str, password: str, *, admin: bool = False, actor: str = "admin-cli"
    ) -> User:
        """Create a user with an argon2-hashed password.

        Raises
        ------
        CoordinatorError
            ``name_invalid``, ``password_weak``, or ``exists``.
        """
        _check_name("user", username)
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
                (username, digest, int(admin), _iso(self._clock())),
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
        with self.db.read() as c:
            row = c.execute("SELECT id, password_hash FROM users WHERE username = ?", (username,)).fetchone()
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
                (_sha256(token), row["id"], _iso(now), now + self.config.token_ttl_s),
            )
        return token

    def authenticate(self, token: str) -> Principal | None:
        """The user or site a bearer token belongs to; None for an unknown or expired one."""
        digest = _sha256(token)
        with self.db.read() as c:
            if token.startswith(_SITE_TOKEN_PREFIX):
                row = c.execute("SELECT name FROM sites WHERE token_hash = ?", (digest,)).fetchone()
                return SitePrincipal(row["name"]) if row else None
            row = c.execute(
                "SELECT u.id, u.username, u.is_admin FROM user_tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.token_hash = ? AND t.expires_at > ?",
                (digest, self._clock()),
            ).fetchone()
        return User(row["id"], row["username"], bool(row["is_admin"])) if row else None

    # ------------------------------------------------------------------ roles

    def _roles(self, c: sqlite3.Connection, user: User, study: str) -> set[str]:
        rows = c.execute("SELECT role FROM study_roles WHERE study = ? AND user_id = ?", (study, user.id))
        return {r[0] for r in rows}

    def _study(self, c: sqlite3.Connection, study: str) -> sqlite3.Row:
        row = c.execute("SELECT * FROM studies WHERE name = ?", (study,)).fetchone()
        if row is None:
            raise refused(404, "not_found", f"No study named {study!r}.")
        return row  # type: ignore[no-any-return]

    def _require(
        self, c: sqlite3.Connection, caller: Principal, study: str, roles: Sequence[str], *, admin_ok: bool
    ) -> set[str]:
        if not isinstance(caller, User):
            raise refused(403, "forbidden", "A site token cannot call this endpoint: use a user's token.")
        have = self._roles(c, caller, study)
        if (admin_ok and caller.is_admin) or have & set(roles):
            return have
        raise refused(
            403,
            "forbidden",
            f"This needs the role {' or '.join(roles)} in study {study!r}; {caller.username} has not.",
        )

    @staticmethod
    def _require_admin(caller: Principal | None) -> str:
        if caller is None:
            return "admin-cli"
        if isinstance(caller, User) and caller.is_admin:
            return caller.actor
        raise refused(403, "forbidden", "This needs the admin role.")

    def grant_role(self, study: str, username: str, role: str, *, caller: Principal | None = None) -> None:
        """Give a user a role in a study (admins only; ``caller=None`` is the local admin CLI).

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``role_invalid``, ``not_found``.
        """
        actor = self._require_admin(caller)
        if role not in ROLES:
            raise refused(400, "role_invalid", f"Expected a role among {', '.join(ROLES)}, found {role!r}.")
        with self.db.write() as c:
            self._study(c, study)
            row = c.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                raise refused(
                    404, "not_found", f"No user named {username!r}. Create it: jip coordinator add-user"
                )
            cur = c.execute("INSERT OR IGNORE INTO study_roles VALUES (?, ?, ?)", (study, row["id"], role))
            if cur.rowcount:
                audit.append(c, actor, "role", study, {"user": username, "role": role})

    # ------------------------------------------------------------------ studies, sites

    def create_study(
        self,
        name: str,
        *,
        review_quorum: int | None = None,
        sites: Iterable[str] = (),
        caller: Principal | None = None,
    ) -> dict[str, Any]:
        """Create a study (admins only; ``caller=None`` is the local admin CLI).

        Parameters
        ----------
        name : str
        review_quorum : int, optional
            Approvals a version needs; default the configuration's ``review_quorum``.
        sites : iterable of str
            Existing sites that take part.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``name_invalid``, ``exists``, ``not_found`` (a site).
        """
        actor = self._require_admin(caller)
        _check_name("study", name)
        quorum = self.config.review_quorum if review_quorum is None else int(review_quorum)
        if quorum < 1:
            raise refused(400, "request_invalid", f"Expected a review quorum of at least 1, found {quorum}.")
        site_list = sorted(set(sites))
        with self.db.write() as c:
            if c.execute("SELECT 1 FROM studies WHERE name = ?", (name,)).fetchone():
                raise refused(409, "exists", f"A study named {name!r} exists already.")
            c.execute("INSERT INTO studies VALUES (?, ?, ?)", (name, quorum, _iso(self._clock())))
            for site in site_list:
                if not c.execute("SELECT 1 FROM sites WHERE name = ?", (site,)).fetchone():
                    raise refused(
                        404, "not_found", f"No site named {site!r}. Add it: jip coordinator add-site"
                    )
                c.execute("INSERT INTO study_sites VALUES (?, ?)", (name, site))
            audit.append(c, actor, "study", name, {"review_quorum": quorum, "sites": site_list})
        return {"name": name, "review_quorum": quorum, "sites": site_list}

    def add_site(
        self, name: str, *, study: str | None = None, reissue: bool = False, actor: str = "admin-cli"
    ) -> EnrolTicket:
        """Register a site (or add it to a study) and make a one-time enrol token.

        Parameters
        ----------
        name : str
        study : str, optional
            A study the site takes part in.
        reissue : bool
            Make a new enrol token for a site that exists (re-enrolment replaces its
            token and pinned key).

        Returns
        -------
        EnrolTicket
            Its ``enrol_token`` is shown once; the database keeps its SHA-256.
        """
        _check_name("site", name)
        now = self._clock()
        token: str | None = None
        expires: float | None = None
        with self.db.write() as c:
            if study is not None:
                self._study(c, study)
            exists = c.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone() is not None
            if not exists or reissue:
                token = _ENROL_TOKEN_PREFIX + secrets.token_urlsafe(32)
                expires = now + self.config.enrol_ttl_s
            if not exists:
                c.execute(
                    "INSERT INTO sites (name, enrol_token_hash, enrol_expires_at, created_at) VALUES (?, ?, ?, ?)",
                    (name, _sha256(token or ""), expires, _iso(now)),
                )
            elif reissue:
                c.execute(
                    "UPDATE sites SET enrol_token_hash = ?, enrol_expires_at = ? WHERE name = ?",
                    (_sha256(token or ""), expires, name),
                )
            if study is not None:
                c.execute("INSERT OR IGNORE INTO study_sites VALUES (?, ?)", (study, name))
            audit.append(c, actor, "site", name, {"study": study, "enrol_token_issued": token is not None})
        return EnrolTicket(
            name,
            token,
            _iso(expires) if expires is not None else None,
            self.key.key_id,
            fingerprint(self.key.public_b64),
        )

    def enrol(self, site: str, enrol_token: str, public_key: str) -> dict[str, Any]:
        """Enrol a site: check its one-time token, pin its public key, issue its site token.

        Returns
        -------
        dict
            ``{site_token, coordinator_keys}``; the site token is shown once.

        Raises
        ------
        CoordinatorError
            ``enrol_token_invalid`` (401) or ``public_key_invalid`` (400).
        """
        try:
            fp = fingerprint(public_key)
        except SignatureError as err:
            raise refused(400, "public_key_invalid", str(err)) from err
        bad = refused(
            401,
            "enrol_token_invalid",
            "Unknown site, or a wrong, used or expired enrol token. Ask the coordinator's admin for a new one "
            "(jip coordinator add-site SITE --reissue).",
        )
        site_token = _SITE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self.db.write() as c:
            row = c.execute(
                "SELECT enrol_token_hash, enrol_expires_at FROM sites WHERE name = ?", (site,)
            ).fetchone()
            if row is None or row["enrol_token_hash"] is None or (row["enrol_expires_at"] or 0) < now:
                raise bad
            if not hmac.compare_digest(row["enrol_token_hash"], _sha256(enrol_token)):
                raise bad
            c.execute(
                "UPDATE sites SET token_hash = ?, enrol_token_hash = NULL, enrol_expires_at = NULL, "
                "public_key = ?, key_fingerprint = ?, enrolled_at = ? WHERE name = ?",
                (_sha256(site_token), public_key, fp, _iso(now), site),
            )
            audit.append(c, f"site:{site}", "enrol", site, {"key_fingerprint": fp})
        return {"site_token": site_token, "coordinator_keys": self.public_keys()}

    # ------------------------------------------------------------------ notebooks, reviews

    def submit_notebook(
        self, caller: Principal, study: str, notebook: Mapping[str, Any] | str
    ) -> dict[str, Any]:
        """Submit a notebook as a version of a study (scientists of the study).

        The same notebook again returns the existing version (``existing: true``).

        Returns
        -------
        dict
            ``{version_hash, parameters, state, existing}``.

        Raises
        ------
        NotebookError
            Malformed notebook or parameters cell.
        CoordinatorError
            ``forbidden``, ``not_found``, ``version_in_other_study``.
        """
        with self.db.read() as c:
            self._study(c, study)
            self._require(c, caller, study, ("scientist",), admin_ok=False)
        assert isinstance(caller, User)
        canon = canonical_notebook(notebook)
        schema = parameter_schema(canon)
        vh = version_hash(canon)
        try:
            schema_json = json.dumps(schema, allow_nan=False)  # in the cell's order
        except ValueError as err:
            raise NotebookError("Parameter defaults must be finite numbers (no NaN or Infinity).") from err
        title = next(
            (
                line.lstrip("#").strip()
                for cell in canon["cells"]
                if cell["cell_type"] == "markdown"
                for line in cell["source"].splitlines()
                if line.startswith("#")
            ),
            "",
        )[:200]
        with self.db.write() as c:
            row = c.execute(
                "SELECT study, state FROM notebook_versions WHERE version_hash = ?", (vh,)
            ).fetchone()
            if row is not None:
                if row["study"] != study:
                    raise refused(
                        409,
                        "version_in_other_study",
                        f"This exact notebook is version {vh[:12]} of study {row['study']!r}; a version "
                        "belongs to one study. Change the notebook (a new version) to submit it here.",
                    )
                return {"version_hash": vh, "parameters": schema, "state": row["state"], "existing": True}
            c.execute(
                "INSERT INTO notebook_versions VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    vh,
                    study,
                    caller.id,
                    title,
                    canonical_json(canon).decode(),
                    schema_json,
                    _iso(self._clock()),
                ),
            )
            audit.append(c, caller.actor, "submission", vh, {"study": study})
        return {"version_hash": vh, "parameters": schema, "state": "pending", "existing": False}

    def _version(self, c: sqlite3.Connection, vh: str) -> sqlite3.Row:
        row = c.execute(
            "SELECT v.*, u.username AS author, s.review_quorum FROM notebook_versions v "
            "JOIN users u ON u.id = v.author_id JOIN studies s ON s.name = v.study WHERE v.version_hash = ?",
            (vh,),
        ).fetchone()
        if row is None:
            raise refused(
                404, "not_found", f"No notebook version {vh!r}. List them: jip notebook list --study S"
            )
        return row  # type: ignore[no-any-return]

    @staticmethod
    def _version_summary(c: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        tally = dict(
            c.execute(
                "SELECT decision, count(*) FROM reviews WHERE version_hash = ? GROUP BY decision",
                (row["version_hash"],),
            ).fetchall()
        )
        return {
            "version_hash": row["version_hash"],
            "study": row["study"],
            "title": row["title"],
            "author": row["author"],
            "state": row["state"],
            "approvals": tally.get("approve", 0),
            "rejections": tally.get("reject", 0),
            "review_quorum": row["review_quorum"],
            "parameters": json.loads(row["parameter_schema"]),
            "submitted_at": row["submitted_at"],
        }

    def list_notebooks(self, caller: Principal, study: str) -> list[dict[str, Any]]:
        """The study's versions with their review state, newest first (any member, admins)."""
        with self.db.read() as c:
            self._study(c, study)
            self._require(c, caller, study, ROLES, admin_ok=True)
            rows = c.execute(
                "SELECT v.*, u.username AS author, s.review_quorum FROM notebook_versions v "
                "JOIN users u ON u.id = v.author_id JOIN studies s ON s.name = v.study "
                "WHERE v.study = ? ORDER BY v.submitted_at DESC",
                (study,),
            ).fetchall()
            return [self._version_summary(c, r) for r in rows]

    def get_notebook(self, caller: Principal, vh: str) -> dict[str, Any]:
        """A version: its summary, canonical notebook and reviews (members of its study, admins)."""
        with self.db.read() as c:
            row = self._version(c, vh)
            self._require(c, caller, row["study"], ROLES, admin_ok=True)
            reviews = c.execute(
                "SELECT u.username AS reviewer, r.decision, r.comment, r.reviewed_at FROM reviews r "
                "JOIN users u ON u.id = r.reviewer_id WHERE r.version_hash = ? ORDER BY r.reviewed_at",
                (vh,),
            ).fetchall()
            out = self._version_summary(c, row)
        out["notebook"] = json.loads(row["canonical"])
        out["reviews"] = [dict(r) for r in reviews]
        return out

    def review(self, caller: Principal, vh: str, decision: str, comment: str = "") -> dict[str, Any]:
        """Approve or reject a version (reviewers of its study other than its author).

        A reviewer's later review replaces their earlier one.  The version is approved
        once ``review_quorum`` reviewers approve and none rejects; any rejection rejects it.

        Returns
        -------
        dict
            The version's summary (state, approvals, quorum).

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``self_review``, ``not_found``, ``request_invalid``.
        """
        if decision not in ("approve", "reject"):
            raise refused(400, "request_invalid", f"Expected decision approve or reject, found {decision!r}.")
        with self.db.read() as c:
            row = self._version(c, vh)
            self._require(c, caller, row["study"], ("reviewer",), admin_ok=False)
        assert isinstance(caller, User)
        if row["author_id"] == caller.id:
            err = refused(403, "self_review", "The author of a notebook version cannot review it.")
            self._audit_refusal(caller.actor, vh, err)
            raise err
        with self.db.write() as c:
            c.execute(
                "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
                (vh, caller.id, decision, comment[:2000], _iso(self._clock())),
            )
            audit.append(c, caller.actor, "review", vh, {"decision": decision})
            tally = dict(
                c.execute(
                    "SELECT decision, count(*) FROM reviews WHERE version_hash = ? GROUP BY decision", (vh,)
                ).fetchall()
            )
            if tally.get("reject", 0):
                state = "rejected"
            elif tally.get("approve", 0) >= row["review_quorum"]:
                state = "approved"
            else:
                state = "pending"
            if state != row["state"]:
                c.execute("UPDATE notebook_versions SET state = ? WHERE version_hash = ?", (state, vh))
                audit.append(
                    c, "coordinator", "approval", vh, {"state": state, "approvals": tally.get("approve", 0)}
                )
            return self._version_summary(c, self._version(c, vh))

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        caller: Principal,
        study: str,
        vh: str,
        parameters: Mapping[str, Any] | None = None,
        sites: Sequence[str] | None = None,
        deadline_s: int = 600,
    ) -> dict[str, Any]:
        """Start a run of an approved version: one queued job per target site (coordinators).

        Parameters
        ----------
        caller : User
        study : str
        vh : str
            The approved version's hash.
        parameters : mapping, optional
            Checked against the version's parameter schema: unknown names and wrong JSON
            types are refused.
        sites : sequence of str, optional
            Target sites (default: every site of the study).
        deadline_s : int
            Wall-clock seconds each site gives the notebook.

        Returns
        -------
        dict
            ``{run_id, jobs: [{job_id, site}]}``.

        Raises
        ------
        ParameterError
        CoordinatorError
            ``forbidden``, ``not_found``, ``not_approved``, ``site_not_in_study``,
            ``deadline_invalid``.
        """
        params = dict(parameters or {})
        if not 1 <= int(deadline_s) <= self.config.max_deadline_s:
            raise refused(
                400,
                "deadline_invalid",
                f"Expected deadline_s from 1 to {self.config.max_deadline_s}, found {deadline_s}.",
            )
        with self.db.read() as c:
            self._study(c, study)
            self._require(c, caller, study, ("coordinator",), admin_ok=False)
            row = self._version(c, vh)
            members = [
                r[0]
                for r in c.execute("SELECT site FROM study_sites WHERE study = ? ORDER BY site", (study,))
            ]
        assert isinstance(caller, User)
        if row["study"] != study:
            raise refused(404, "not_found", f"Version {vh[:12]} is not a version of study {study!r}.")
        if row["state"] != "approved":
            raise refused(
                409, "not_approved", f"Version {vh[:12]} is {row['state']}: only an approved version can run."
            )
        try:
            check_parameters(json.loads(row["parameter_schema"]), params)
            params_json = canonical_json(params).decode()
        except ValueError as err:
            raise ParameterError(
                "Run parameters refused: numbers must be finite (no NaN or Infinity)."
            ) from err
        except NotebookError as err:
            self._audit_refusal(caller.actor, vh, err)
            raise
        targets = list(dict.fromkeys(sites)) if sites else members
        outside = [s for s in targets if s not in members]
        if outside or not targets:
            raise refused(
                400,
                "site_not_in_study",
                f"Sites {outside} do not take part in study {study!r} (its sites: {members or 'none'})."
                if outside
                else f"Study {study!r} has no sites yet. Add one: jip coordinator add-site SITE --study {study}",
            )
        run_id = "run-" + uuid.uuid4().hex
        now = _iso(self._clock())
        jobs = [{"job_id": str(uuid.uuid4()), "site": s} for s in targets]
        with self.db.write() as c:
            c.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, 'running', NULL)",
                (run_id, study, vh, params_json, int(deadline_s), caller.id, now),
            )
            c.executemany(
                "INSERT INTO jobs (job_id, run_id, site, state, attempt, updated_at) VALUES (?, ?, ?, 'queued', 0, ?)",
                [(j["job_id"], run_id, j["site"], now) for j in jobs],
            )
            audit.append(
                c,
                caller.actor,
                "run",
                run_id,
                {
                    "study": study,
                    "version_hash": vh,
                    "parameters_sha256": sha256_hex(canonical_json(params)),
                    "deadline_s": int(deadline_s),
                    "jobs": {j["site"]: j["job_id"] for j in jobs},
                },
            )
        return {"run_id": run_id, "jobs": jobs}

    def _run(
        self, c: sqlite3.Connection, caller: Principal, run_id: str, roles: Sequence[str]
    ) -> sqlite3.Row:
        run = c.execute(
            "SELECT r.*, u.username AS creator FROM runs r JOIN users u ON u.id = r.created_by WHERE r.run_id = ?",
            (run_id,),
        ).fetchone()
        if run is None:
            raise refused(404, "not_found", f"No run {run_id!r}.")
        self._require(c, caller, run["study"], roles, admin_ok=True)
        return run  # type: ignore[no-any-return]

    def get_run(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """A run and its jobs' states (members of its study, admins)."""
        with self.db.read() as c:
            run = self._run(c, caller, run_id, ROLES)
            jobs = c.execute(
                "SELECT job_id, site, state, attempt, reason, lease_expires_at, updated_at FROM jobs "
                "WHERE run_id = ? ORDER BY site",
                (run_id,),
            ).fetchall()
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        return {
            "run_id": run_id,
            "study": run["study"],
            "version_hash": run["version_hash"],
            "parameters": json.loads(run["parameters"]),
            "deadline_s": run["deadline_s"],
            "state": run["state"],
            "created_by": run["creator"],
            "created_at": run["created_at"],
            "finished_at": run["finished_at"],
            "counts": counts,
            "jobs": [
                {
                    **dict(j),
                    "lease_expires_at": _iso(j["lease_expires_at"]) if j["state"] == "leased" else None,
                }
                for j in jobs
            ],
        }

    def cancel_run(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """Cancel a run: its queued and leased jobs end ``cancelled`` (coordinators, admins).

        A runner holding a lease learns it at its next renewal (409 ``cancelled``).

        Returns
        -------
        dict
            ``{run_id, state, cancelled: [job_id, ...]}``.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``not_found``, ``run_final`` (the run had finished).
        """
        now = _iso(self._clock())
        with self.db.write() as c:
            run = self._run(c, caller, run_id, ("coordinator",))
            if run["state"] == "done":
                raise refused(409, "run_final", f"Run {run_id} has finished; there is nothing to cancel.")
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT job_id FROM jobs WHERE run_id = ? AND state IN ('queued', 'leased')", (run_id,)
                )
            ]
            c.execute(
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled', lease_expires_at = NULL, updated_at = ? "
                "WHERE run_id = ? AND state IN ('queued', 'leased')",
                (now, run_id),
            )
            if run["state"] == "running":
                c.execute(
                    "UPDATE runs SET state = 'cancelled', finished_at = ? WHERE run_id = ?", (now, run_id)
                )
                audit.append(c, caller.actor, "cancel", run_id, {"jobs": ids})
        return {"run_id": run_id, "state": "cancelled", "cancelled": ids}

    def run_results(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """Per-site results of a run and its combined records (members, admins).

        Returns
        -------
        dict
            ``{run_id, study, version_hash, state, sites: [...], combined: [...]}``; each
            site entry holds its job's state and, once a result came, its status,
            reason, failed cell, exception class, records and outputs.  ``combined``
            pools the records of succeeded jobs (others count as missing; see
            :func:`jipkit.coordinator.aggregate.combine`).
        """
        from jipkit.coordinator.aggregate import combine

        with self.db.read() as c:
            run = self._run(c, caller, run_id, ROLES)
            rows = c.execute(
                "SELECT j.job_id, j.site, j.state, j.attempt, j.reason AS job_reason, r.document, r.received_at "
                "FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id WHERE j.run_id = ? ORDER BY j.site",
                (run_id,),
            ).fetchall()
        sites = []
        records: dict[str, list[dict[str, Any]] | None] = {}
        for r in rows:
            doc = json.loads(r["document"]) if r["document"] else {}
            entry = {
                "site": r["site"],
                "job_id": r["job_id"],
                "state": r["state"],
                "attempt": r["attempt"],
                "status": doc.get("status"),
                "reason": doc.get("reason") if doc else r["job_reason"],
                "failed_cell": doc.get("failed_cell"),
                "exception": doc.get("exception"),
                "records": doc.get("records", []),
                "outputs": doc.get("outputs", []),
                "started_at": doc.get("started_at"),
                "finished_at": doc.get("finished_at"),
                "received_at": r["received_at"],
            }
            sites.append(entry)
            records[r["site"]] = entry["records"] if r["state"] == "succeeded" else None
        return {
            "run_id": run_id,
            "study": run["study"],
            "version_hash": run["version_hash"],
            "state": run["state"],
            "sites": sites,
            "combined": combine(records),
        }

    def _finish_run_if_done(self, c: sqlite3.Connection, run_id: str, now: float) -> None:
        open_jobs = c.execute(
            "SELECT count(*) FROM jobs WHERE run_id = ? AND state IN ('queued', 'leased')", (run_id,)
        ).fetchone()[0]
        if open_jobs == 0:
            cur = c.execute(
                "UPDATE runs SET state = 'done', finished_at = ? WHERE run_id = ? AND state = 'running'",
                (_iso(now), run_id),
            )
            if cur.rowcount:
                audit.append(c, "coordinator", "run_done", run_id, {})

    # ------------------------------------------------------------------ site side: claims and leases

    def _expire(self, c: sqlite3.Connection, now: float, site: str | None = None) -> list[str]:
        """Requeue (or fail, after max_attempts) jobs whose lease ran out; the sites requeued."""
        sql = (
            "SELECT job_id, run_id, site, attempt FROM jobs WHERE state = 'leased' AND lease_expires_at <= ?"
        )
        args: tuple[Any, ...] = (now,)
        if site is not None:
            sql += " AND site = ?"
            args = (now, site)
        requeued: list[str] = []
        for j in c.execute(sql, args).fetchall():
            if j["attempt"] >= self.config.max_attempts:
                c.execute(
                    "UPDATE jobs SET state = 'failed', reason = ?, lease_expires_at = NULL, updated_at = ? "
                    "WHERE job_id = ?",
                    (LEASE_EXPIRED, _iso(now), j["job_id"]),
                )
                audit.append(
                    c, "coordinator", "lease_expiry", j["job_id"], {"attempt": j["attempt"], "final": True}
                )
                self._finish_run_if_done(c, j["run_id"], now)
            else:
                c.execute(
                    "UPDATE jobs SET state = 'queued', lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                    (_iso(now), j["job_id"]),
                )
                audit.append(
                    c, "coordinator", "lease_expiry", j["job_id"], {"attempt": j["attempt"], "final": False}
                )
                requeued.append(j["site"])
        return requeued

    def expire_leases(self) -> list[str]:
        """Requeue or fail every job whose lease ran out.

        Returns
        -------
        list of str
            Sites that have a job queued again (to wake their long polls).
        """
        now = self._clock()
        with self.db.read() as c:
            due = c.execute(
                "SELECT 1 FROM jobs WHERE state = 'leased' AND lease_expires_at <= ? LIMIT 1", (now,)
            ).fetchone()
        if due is None:
            return []
        with self.db.write() as c:
            return sorted(set(self._expire(c, now)))

    def _canonical(self, c: sqlite3.Connection, vh: str) -> dict[str, Any]:
        canon = self._notebooks.get(vh)
        if canon is None:
            row = c.execute(
                "SELECT canonical FROM notebook_versions WHERE version_hash = ?", (vh,)
            ).fetchone()
            canon = self._notebooks[vh] = json.loads(row[0])
        return canon

    def claim_next(self, site: SitePrincipal) -> Claim | None:
        """Claim the site's oldest queued job: a new attempt holds a lease; sign its envelope.

        Returns
        -------
        Claim or None
            None when the site has no queued job (and no expired lease to take over).
        """
        now = self._clock()
        with self.db.read() as c:
            ready = c.execute(
                "SELECT 1 FROM jobs WHERE site = ? AND (state = 'queued' OR (state = 'leased' "
                "AND lease_expires_at <= ?)) LIMIT 1",
                (site.name, now),
            ).fetchone()
        if ready is None:
            return None
        with self.db.write() as c:
            self._expire(c, now, site.name)
            job = c.execute(
                "SELECT j.id, j.job_id, j.run_id, j.attempt, r.study, r.version_hash, r.parameters, r.deadline_s "
                "FROM jobs j JOIN runs r ON r.run_id = j.run_id WHERE j.site = ? AND j.state = 'queued' "
                "ORDER BY j.id LIMIT 1",
                (site.name,),
            ).fetchone()
            if job is None:
                return None
            attempt = job["attempt"] + 1
            envelope = sign_document(
                {
                    "type": JOB_TYPE,
                    "job_id": job["job_id"],
                    "attempt": attempt,
                    "run_id": job["run_id"],
                    "study": job["study"],
                    "site": site.name,
                    "version_hash": job["version_hash"],
                    "notebook": self._canonical(c, job["version_hash"]),
                    "parameters": json.loads(job["parameters"]),
                    "issued_at": _iso(now),
                    "expires_at": _iso(now + self.config.envelope_ttl_s),
                    "deadline_s": job["deadline_s"],
                },
                self.key,
            )
            env_hash = sha256_hex(canonical_json(envelope))
            lease = now + self.config.lease_s
            c.execute(
                "UPDATE jobs SET state = 'leased', attempt = ?, lease_expires_at = ?, envelope_sha256 = ?, "
                "updated_at = ? WHERE id = ?",
                (attempt, lease, env_hash, _iso(now), job["id"]),
            )
            audit.append(
                c,
                "coordinator",
                "signature",
                job["job_id"],
                {"attempt": attempt, "key_id": self.key.key_id, "envelope_sha256": env_hash},
            )
            audit.append(
                c, site.actor, "claim", job["job_id"], {"attempt": attempt, "lease_expires_at": _iso(lease)}
            )
        return Claim(envelope, _iso(lease))

    def _site_job(self, c: sqlite3.Connection, site: SitePrincipal, job_id: str) -> sqlite3.Row:
        job = c.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if job is None:
            raise refused(404, "not_found", f"No job {job_id!r}.")
        if job["site"] != site.name:
            raise refused(
                403, "wrong_site", f"Job {job_id} belongs to another site; {site.name} cannot act on it."
            )
        return job  # type: ignore[no-any-return]

    def _holds_lease(self, job: sqlite3.Row, attempt: object, now: float) -> CoordinatorError | None:
        if job["state"] == "cancelled":
            return refused(409, "cancelled", f"Job {job['job_id']} was cancelled: stop it.")
        if (
            job["state"] != "leased"
            or job["attempt"] != attempt
            or job["lease_expires_at"] is None
            or job["lease_expires_at"] <= now
        ):
            return refused(
                409,
                "lease_lost",
                f"Attempt {attempt} of job {job['job_id']} does not hold its lease (the job is {job['state']}, "
                f"attempt {job['attempt']}): stop it.",
            )
        return None

    def renew_lease(self, site: SitePrincipal, job_id: str, attempt: int) -> str:
        """Extend the lease of the attempt that holds it.

        Returns
        -------
        str
            The new ``lease_expires_at``.

        Raises
        ------
        CoordinatorError
            ``lease_lost`` or ``cancelled`` (409: stop the job), ``wrong_site``, ``not_found``.
        """
        now = self._clock()
        with self.db.write() as c:
            job = self._site_job(c, site, job_id)
            err = self._holds_lease(job, attempt, now)
            if err is not None:
                raise err
            lease = now + self.config.lease_s
            c.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                (lease, _iso(now), job_id),
            )
        return _iso(lease)

    def decline(self, site: SitePrincipal, job_id: str, attempt: int, reason: str) -> dict[str, Any]:
        """A site declines a job it holds (it will not run it); final.

        Parameters
        ----------
        reason : str
            One of :data:`jipkit.protocol.messages.REFUSAL_REASONS`.

        Returns
        -------
        dict
            ``{declined: true, duplicate: bool}``.
        """
        if reason not in REFUSAL_REASONS:
            raise refused(
                400,
                "reason_invalid",
                f"Expected a reason among {', '.join(REFUSAL_REASONS)}, found {reason[:40]!r}.",
            )
        now = self._clock()
        with self.db.write() as c:
            job = self._site_job(c, site, job_id)
            if job["state"] == "declined" and job["attempt"] == attempt:
                return {"declined": True, "duplicate": True}
            err = self._holds_lease(job, attempt, now)
            if err is not None:
                raise err
            c.execute(
                "UPDATE jobs SET state = 'declined', reason = ?, lease_expires_at = NULL, updated_at = ? "
                "WHERE job_id = ?",
                (reason, _iso(now), job_id),
            )
            audit.append(c, site.actor, "decline", job_id, {"attempt": attempt, "reason": reason})
            self._finish_run_if_done(c, job["run_id"], now)
        return {"declined": True, "duplicate": False}

    # ------------------------------------------------------------------ site side: results

    def _parse_result(self, body: bytes, job_id: str) -> dict[str, Any]:
        if len(body) > self.config.max_result_bytes:
            raise refused(
                400, "result_invalid", f"The result is larger than {self.config.max_result_bytes} bytes."
            )
        try:
            doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except ValueError as err:  # UnicodeDecodeError is one
            raise refused(
                400, "result_invalid", "The result is not UTF-8 JSON (without NaN or Infinity)."
            ) from err
        if not isinstance(doc, dict) or doc.get("type") != RESULT_TYPE:
            raise refused(400, "result_invalid", f"Expected a {RESULT_TYPE} document.")
        if doc.get("job_id") != job_id:
            raise refused(400, "result_invalid", f"The result names job {doc.get('job_id')!r}, not {job_id}.")
        return doc

    @staticmethod
    def _check_result(doc: Mapping[str, Any], job: sqlite3.Row, vh: str) -> None:
        def bad(msg: str) -> CoordinatorError:
            return refused(400, "result_invalid", msg)

        status, reason = doc.get("status"), doc.get("reason")
        # A refusal describes the envelope the site saw, which may be the one it refused
        # for not matching (tampered, replayed): its run_id and version_hash may differ.
        if status != "refused" and (doc.get("run_id") != job["run_id"] or doc.get("version_hash") != vh):
            raise bad("The result's run_id or version_hash is not its job's.")
        if not isinstance(doc.get("attempt"), int) or isinstance(doc.get("attempt"), bool):
            raise bad("Expected an integer attempt.")
        if status not in RESULT_STATUSES:
            raise bad(f"Expected status among {RESULT_STATUSES}, found {str(status)[:40]!r}.")
        allowed: tuple[str | None, ...] = {
            "succeeded": (None,),
            "failed": FAILURE_REASONS,
            "refused": REFUSAL_REASONS,
        }[status]
        if reason not in allowed:
            raise bad(f"A {status} result takes a reason among {allowed}, found {str(reason)[:40]!r}.")
        cell = doc.get("failed_cell")
        if cell is not None and (not isinstance(cell, int) or isinstance(cell, bool)):
            raise bad("Expected failed_cell to be null or a cell index.")
        exc = doc.get("exception")
        if exc is not None and builtin_exception_name(exc if isinstance(exc, str) else None) is None:
            raise bad("Only a Python built-in exception class name may leave a site.")
        outputs, records = doc.get("outputs", []), doc.get("records", [])
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("outputs", []), list) for o in outputs
        ):
            raise bad("Expected outputs as a list of {cell, outputs}.")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise bad("Expected records as a list of records.")
        for r in records:
            try:
                validate_record(r)
            except NotebookError as err:
                raise bad(str(err)) from err

    def accept_result(self, site: SitePrincipal, job_id: str, body: bytes) -> dict[str, Any]:
        """Accept a site's signed result for a job, once.

        Parameters
        ----------
        site : SitePrincipal
            The caller; the job must be this site's and the result signed by its pinned key.
        job_id : str
        body : bytes
            The signed ``jip.result/1`` document as received (stored verbatim).

        Returns
        -------
        dict
            ``{accepted: true, duplicate: bool}``: ``duplicate`` when the same result
            (same content, signature aside) was accepted before.

        Raises
        ------
        CoordinatorError
            400 ``result_invalid`` / ``signature_invalid`` / ``unknown_key``;
            403 ``wrong_site``; 404 ``not_found``; 409 ``result_conflict`` (a different
            result was accepted first), ``lease_lost`` (the attempt does not hold an
            unexpired lease), ``cancelled``.
        """
        doc = self._parse_result(body, job_id)
        with self.db.read() as c:
            job = self._site_job(c, site, job_id)
            pinned = c.execute("SELECT public_key FROM sites WHERE name = ?", (site.name,)).fetchone()[0]
            vh = c.execute("SELECT version_hash FROM runs WHERE run_id = ?", (job["run_id"],)).fetchone()[0]
        if doc.get("site") != site.name:
            raise refused(403, "wrong_site", f"The result names site {doc.get('site')!r}, not {site.name}.")
        sig = doc.get("signature")
        signer = sig.get("key_id") if isinstance(sig, dict) else None
        if pinned is None or (signer is not None and signer != key_id(pinned)):
            raise refused(400, "unknown_key", f"The result is not signed by the key pinned for {site.name}.")
        try:
            verify_document(doc, {key_id(pinned): pinned})
        except SignatureError as err:
            raise refused(400, "signature_invalid", str(err)) from err
        self._check_result(doc, job, vh)
        content = sha256_hex(canonical_json({k: v for k, v in doc.items() if k != "signature"}))
        now = self._clock()
        refusal: CoordinatorError | None = None
        with self.db.write() as c:
            prior = c.execute("SELECT content_sha256 FROM results WHERE job_id = ?", (job_id,)).fetchone()
            job = self._site_job(c, site, job_id)
            if prior is not None and prior[0] == content:
                return {"accepted": True, "duplicate": True}
            if prior is not None:
                refusal = refused(
                    409,
                    "result_conflict",
                    f"A different result for job {job_id} was accepted first; it is final.",
                )
            else:
                refusal = self._holds_lease(job, doc["attempt"], now)
            if refusal is not None:
                audit.append(
                    c, site.actor, "refusal", job_id, {"reason": refusal.reason, "attempt": doc["attempt"]}
                )
            else:
                c.execute(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        doc["attempt"],
                        site.name,
                        doc["status"],
                        body.decode("utf-8"),
                        sha256_hex(canonical_json(doc)),
                        content,
                        _iso(now),
                    ),
                )
                c.execute(
                    "UPDATE jobs SET state = ?, reason = ?, lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                    (doc["status"], doc.get("reason"), _iso(now), job_id),
                )
                audit.append(
                    c,
                    site.actor,
                    "result",
                    job_id,
                    {
                        "attempt": doc["attempt"],
                        "status": doc["status"],
                        "reason": doc.get("reason"),
                        "sha256": content,
                    },
                )
                self._finish_run_if_done(c, job["run_id"], now)
        if refusal is not None:
            raise refusal
        return {"accepted": True, "duplicate": False}
