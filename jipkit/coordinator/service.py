"""The coordinator's rules, without HTTP: who may do what, reviews, runs, leases, results.

Every method that changes state does it in one database transaction together with its
audit entry.  Every method a person or a site calls takes the caller
(:class:`User` or :class:`SitePrincipal`) and checks its role first.  Refusals raise
:class:`~jipkit.errors.CoordinatorError` with an HTTP ``status`` and a fixed ``reason``
(see :data:`REASONS`), or :class:`~jipkit.errors.ParameterError` /
:class:`~jipkit.errors.NotebookError` for a notebook or parameters that do not fit.

:class:`Service` is the one entry point; its methods live in one module per job::

    access.py    callers (User, SitePrincipal), ROLES, REASONS, refused(), role checks
    base.py      ServiceBase: the state the parts share; timestamps, token hashes, names
    accounts.py  users, passwords, API tokens, authentication, study roles
    studies.py   studies, their sites, enrol tickets and enrolment
    reviews.py   notebook versions and their reviews
    runs.py      start, read and cancel runs
    leases.py    the site side: claims, leases, expiry, declines
    results.py   accept a site's signed result; a run's results

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
                        '--held--> held --result of the held attempt--> succeeded | failed
    queued | leased | held --cancel--> cancelled

``held``: the site ran the job and its result waits for a data steward's release; no
lease runs.  The released result (or ``failed`` / ``release_rejected``) is accepted from
the held attempt.  Each result's provenance is checked, the continuity of the site's
audit log included (:mod:`jipkit.coordinator.provenance`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from argon2 import PasswordHasher

from jipkit.coordinator import audit
from jipkit.coordinator.access import REASONS, ROLES, Principal, SitePrincipal, User, refused
from jipkit.coordinator.accounts import AccountsMixin
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.db import Database
from jipkit.coordinator.leases import LEASE_EXPIRED, Claim, LeasesMixin
from jipkit.coordinator.results import ResultsMixin
from jipkit.coordinator.reviews import ReviewsMixin
from jipkit.coordinator.runs import RunsMixin
from jipkit.coordinator.studies import EnrolTicket, StudiesMixin
from jipkit.errors import ConfigError
from jipkit.protocol.signing import SigningKey

__all__ = [
    "LEASE_EXPIRED",
    "REASONS",
    "ROLES",
    "Claim",
    "EnrolTicket",
    "Principal",
    "Service",
    "SitePrincipal",
    "User",
    "refused",
]


class Service(AccountsMixin, StudiesMixin, ReviewsMixin, RunsMixin, LeasesMixin, ResultsMixin):
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
        self._dummy = None
        self._notebooks = {}

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

    def verify_audit(self) -> audit.ChainCheck:
        """Check the audit log's hash chain (see :func:`jipkit.coordinator.audit.verify_chain`)."""
        with self.db.read() as c:
            return audit.verify_chain(c)
