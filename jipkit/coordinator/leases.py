"""The site side of jobs: claims, leases and their expiry, holds, declines.

A site's claim leases its oldest queued job to a new attempt and signs its envelope; a
lease that runs out requeues the job, or fails it (``lease_expired``) after
``max_attempts``.  A site whose result waits for a data steward's release reports the
job ``held``: its lease stops running (a steward may take days) until the held attempt's
result comes.  The whole life cycle of a job is drawn in
:mod:`jipkit.coordinator.service`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from jipkit.coordinator import audit
from jipkit.coordinator.access import SitePrincipal, refused
from jipkit.coordinator.base import ServiceBase, iso
from jipkit.errors import CoordinatorError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import JOB_TYPE, REFUSAL_REASONS
from jipkit.protocol.signing import sign_document

__all__ = ["LEASE_EXPIRED", "Claim", "LeasesMixin", "finish_run_if_done", "holds_lease", "site_job"]

LEASE_EXPIRED: Final = "lease_expired"
"""The failure reason of a job whose lease expired ``max_attempts`` times."""


@dataclass(frozen=True)
class Claim:
    """A claimed job: the signed envelope and the lease's end (coordinator clock)."""

    envelope: dict[str, Any]
    lease_expires_at: str


def finish_run_if_done(c: sqlite3.Connection, run_id: str, now: float) -> None:
    """Mark the run ``done`` (and audit it) once none of its jobs is queued, leased or held."""
    open_jobs = c.execute(
        "SELECT count(*) FROM jobs WHERE run_id = ? AND state IN ('queued', 'leased', 'held')", (run_id,)
    ).fetchone()[0]
    if open_jobs == 0:
        cur = c.execute(
            "UPDATE runs SET state = 'done', finished_at = ? WHERE run_id = ? AND state = 'running'",
            (iso(now), run_id),
        )
        if cur.rowcount:
            audit.append(c, "coordinator", "run_done", run_id, {})


def site_job(c: sqlite3.Connection, site: SitePrincipal, job_id: str) -> sqlite3.Row:
    """The job's row; 404 ``not_found``, or 403 ``wrong_site`` when it is another site's."""
    job = c.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if job is None:
        raise refused(404, "not_found", f"No job {job_id!r}.")
    if job["site"] != site.name:
        raise refused(
            403, "wrong_site", f"Job {job_id} belongs to another site; {site.name} cannot act on it."
        )
    return job  # type: ignore[no-any-return]


def holds_lease(job: sqlite3.Row, attempt: object, now: float) -> CoordinatorError | None:
    """None when ``attempt`` holds the job's unexpired lease; else the 409 refusal to raise."""
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


class LeasesMixin(ServiceBase):
    """Claims, lease renewals, declines and lease expiry."""

    _notebooks: dict[str, dict[str, Any]]

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
                    (LEASE_EXPIRED, iso(now), j["job_id"]),
                )
                audit.append(
                    c, "coordinator", "lease_expiry", j["job_id"], {"attempt": j["attempt"], "final": True}
                )
                finish_run_if_done(c, j["run_id"], now)
            else:
                c.execute(
                    "UPDATE jobs SET state = 'queued', lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                    (iso(now), j["job_id"]),
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
                    "issued_at": iso(now),
                    "expires_at": iso(now + self.config.envelope_ttl_s),
                    "deadline_s": job["deadline_s"],
                },
                self.key,
            )
            env_hash = sha256_hex(canonical_json(envelope))
            lease = now + self.config.lease_s
            c.execute(
                "UPDATE jobs SET state = 'leased', attempt = ?, lease_expires_at = ?, envelope_sha256 = ?, "
                "updated_at = ? WHERE id = ?",
                (attempt, lease, env_hash, iso(now), job["id"]),
            )
            audit.append(
                c,
                "coordinator",
                "signature",
                job["job_id"],
                {"attempt": attempt, "key_id": self.key.key_id, "envelope_sha256": env_hash},
            )
            audit.append(
                c, site.actor, "claim", job["job_id"], {"attempt": attempt, "lease_expires_at": iso(lease)}
            )
        return Claim(envelope, iso(lease))

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
            job = site_job(c, site, job_id)
            err = holds_lease(job, attempt, now)
            if err is not None:
                raise err
            lease = now + self.config.lease_s
            c.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                (lease, iso(now), job_id),
            )
        return iso(lease)

    def hold(self, site: SitePrincipal, job_id: str, attempt: int) -> dict[str, Any]:
        """The attempt holding the lease ran the job; its result waits at the site for release.

        The job becomes ``held``: no lease runs, nothing expires, and a result from this
        attempt is accepted later without a lease.

        Returns
        -------
        dict
            ``{held: true, duplicate: bool}``.

        Raises
        ------
        CoordinatorError
            ``lease_lost`` or ``cancelled`` (409), ``wrong_site``, ``not_found``.
        """
        now = self._clock()
        with self.db.write() as c:
            job = site_job(c, site, job_id)
            if job["state"] == "held" and job["attempt"] == attempt:
                return {"held": True, "duplicate": True}
            err = holds_lease(job, attempt, now)
            if err is not None:
                raise err
            c.execute(
                "UPDATE jobs SET state = 'held', lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (iso(now), job_id),
            )
            audit.append(c, site.actor, "held", job_id, {"attempt": attempt})
        return {"held": True, "duplicate": False}

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
            job = site_job(c, site, job_id)
            if job["state"] == "declined" and job["attempt"] == attempt:
                return {"declined": True, "duplicate": True}
            err = holds_lease(job, attempt, now)
            if err is not None:
                raise err
            c.execute(
                "UPDATE jobs SET state = 'declined', reason = ?, lease_expires_at = NULL, updated_at = ? "
                "WHERE job_id = ?",
                (reason, iso(now), job_id),
            )
            audit.append(c, site.actor, "decline", job_id, {"attempt": attempt, "reason": reason})
            finish_run_if_done(c, job["run_id"], now)
        return {"declined": True, "duplicate": False}
