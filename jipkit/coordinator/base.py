"""What the service's parts share: their state, and the formats they write.

:class:`ServiceBase` declares the attributes that
:class:`~jipkit.coordinator.service.Service` sets up, and the few methods every part
calls; each part of the service (accounts, studies, reviews, runs, leases, results) is a
mixin over it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime

from jipkit.coordinator import audit
from jipkit.coordinator.access import refused
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.db import Database
from jipkit.errors import CoordinatorError, NotebookError
from jipkit.protocol.signing import SigningKey

__all__ = ["ServiceBase", "check_name", "iso", "sha256_text"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def sha256_text(text: str) -> str:
    """The SHA-256 of ``text`` (UTF-8) in hex: how tokens are kept."""
    return hashlib.sha256(text.encode()).hexdigest()


def iso(t: float) -> str:
    """Seconds since the epoch as an ISO 8601 UTC timestamp (microseconds, ``Z``)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid user, study or site name; 400 ``name_invalid`` otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise refused(
            400,
            "name_invalid",
            f"Expected a {kind} name of letters, digits and _.- (at most 64), found {name!r}.",
        )
    return name


class ServiceBase:
    """The state the service's parts share (set by :class:`~jipkit.coordinator.service.Service`).

    Attributes
    ----------
    db : Database
    key : SigningKey
        The key that signs job envelopes.
    config : CoordinatorConfig
    """

    db: Database
    key: SigningKey
    config: CoordinatorConfig
    _clock: Callable[[], float]

    def public_keys(self) -> dict[str, str]:
        """``{key_id: public_key_base64}`` of the keys that sign envelopes."""
        return {self.key.key_id: self.key.public_b64}

    def _audit_refusal(self, actor: str, subject: str, err: CoordinatorError | NotebookError) -> None:
        with self.db.write() as c:
            audit.append(c, actor, "refusal", subject, {"reason": err.reason})
