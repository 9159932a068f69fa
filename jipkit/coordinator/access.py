"""Who calls the coordinator and what they may do: callers, roles, refusals.

Refusals raise :class:`~jipkit.errors.CoordinatorError` with an HTTP ``status`` and a
fixed ``reason`` from :data:`REASONS` (made by :func:`refused`).  The checks here run
inside the caller's database transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from jipkit.errors import CoordinatorError

__all__ = [
    "REASONS",
    "ROLES",
    "Principal",
    "SitePrincipal",
    "User",
    "refused",
    "require",
    "require_admin",
    "require_user",
    "require_visible",
    "roles_of",
    "study_row",
]

ROLES: Final = ("scientist", "reviewer", "coordinator")
"""Per-study roles.  ``admin`` is global (``users.is_admin``)."""


REASONS: Final = {
    "unauthenticated": "401: no bearer token, or an unknown or expired one",
    "login_failed": "401: wrong username or password",
    "enrol_token_invalid": "401: unknown site, or an enrol token that is wrong, used or expired",
    "forbidden": "403: the caller's role does not allow this",
    "self_review": "403: the author of a version cannot review it",
    "wrong_site": "403: the job belongs to another site, or the result names another site",
    "not_found": "404: no such study, user, site, notebook version, run or job (or, to a user "
    "without a role in its study, one that exists there: see require_visible)",
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


def refused(status: int, reason: str, message: str) -> CoordinatorError:
    """A :class:`CoordinatorError` with an HTTP status and a reason code from :data:`REASONS`."""
    err = CoordinatorError(message, status)
    err.reason = reason
    return err


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


def roles_of(c: sqlite3.Connection, user: User, study: str) -> set[str]:
    """The roles ``user`` holds in ``study``."""
    rows = c.execute("SELECT role FROM study_roles WHERE study = ? AND user_id = ?", (study, user.id))
    return {r[0] for r in rows}


def study_row(c: sqlite3.Connection, study: str) -> sqlite3.Row:
    """The study's row; 404 ``not_found`` when there is none."""
    row = c.execute("SELECT * FROM studies WHERE name = ?", (study,)).fetchone()
    if row is None:
        raise refused(404, "not_found", f"No study named {study!r}.")
    return row  # type: ignore[no-any-return]


def require(
    c: sqlite3.Connection, caller: Principal, study: str, roles: Sequence[str], *, admin_ok: bool
) -> set[str]:
    """The caller's roles in ``study``; 403 ``forbidden`` unless it holds one of ``roles``.

    An admin passes too when ``admin_ok``; a site never does.
    """
    if not isinstance(caller, User):
        raise refused(403, "forbidden", "A site token cannot call this endpoint: use a user's token.")
    have = roles_of(c, caller, study)
    if (admin_ok and caller.is_admin) or have & set(roles):
        return have
    raise refused(
        403,
        "forbidden",
        f"This needs the role {' or '.join(roles)} in study {study!r}; {caller.username} has not.",
    )


def require_user(caller: Principal) -> User:
    """The caller as a :class:`User`; 403 ``forbidden`` for a site token."""
    if not isinstance(caller, User):
        raise refused(403, "forbidden", "A site token cannot call this endpoint: use a user's token.")
    return caller


def require_visible(
    c: sqlite3.Connection,
    caller: Principal,
    study: str,
    roles: Sequence[str],
    *,
    admin_ok: bool,
    missing: CoordinatorError,
) -> set[str]:
    """As :func:`require`, for a version, run or job found by its id in ``study``.

    A user with no role at all in the study (and not an admin) is refused with
    ``missing``: the very refusal (404 ``not_found``) of an id that does not exist.  A
    version hash can be computed from a notebook file, so a 403 naming the study would
    tell anyone whether that notebook was submitted, and where.  A member without one of
    ``roles`` still gets 403 ``forbidden``.
    """
    user = require_user(caller)
    if not user.is_admin and not roles_of(c, user, study):
        raise missing
    return require(c, user, study, roles, admin_ok=admin_ok)


def require_admin(caller: Principal | None) -> str:
    """How the audit log names an admin caller (``None``: the local admin CLI); else 403 ``forbidden``."""
    if caller is None:
        return "admin-cli"
    if isinstance(caller, User) and caller.is_admin:
        return caller.actor
    raise refused(403, "forbidden", "This needs the admin role.")
