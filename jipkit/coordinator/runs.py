"""Runs of an approved version: start one (a queued job per site), read it, cancel it."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from jipkit.coordinator import audit
from jipkit.coordinator.access import (
    ROLES,
    Principal,
    User,
    refused,
    require,
    require_user,
    require_visible,
    study_row,
)
from jipkit.coordinator.base import ServiceBase, iso
from jipkit.coordinator.reviews import version_missing, version_row
from jipkit.errors import CoordinatorError, NotebookError, ParameterError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.notebook import check_parameters

__all__ = ["RunsMixin", "run_missing", "run_row"]


def run_missing(run_id: str) -> CoordinatorError:
    """The refusal for a run id that does not exist, or that the caller may not know of."""
    return refused(404, "not_found", f"No run {run_id!r}.")


def run_row(c: sqlite3.Connection, caller: Principal, run_id: str, roles: Sequence[str]) -> sqlite3.Row:
    """The run's row with its creator, for a caller holding one of ``roles`` in its study (or an admin).

    404 ``not_found`` when there is no such run *or* the caller has no role in its study
    (the same refusal: a run id does not tell an outsider that it exists, nor its study);
    403 ``forbidden`` for a member without one of ``roles``.
    """
    require_user(caller)
    run = c.execute(
        "SELECT r.*, u.username AS creator FROM runs r JOIN users u ON u.id = r.created_by WHERE r.run_id = ?",
        (run_id,),
    ).fetchone()
    if run is None:
        raise run_missing(run_id)
    require_visible(c, caller, run["study"], roles, admin_ok=True, missing=run_missing(run_id))
    return run  # type: ignore[no-any-return]


class RunsMixin(ServiceBase):
    """Start, read and cancel runs (the people's side of jobs)."""

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
            study_row(c, study)
            require(c, caller, study, ("coordinator",), admin_ok=False)
            row = version_row(c, vh)
            members = [
                r[0]
                for r in c.execute("SELECT site FROM study_sites WHERE study = ? ORDER BY site", (study,))
            ]
        assert isinstance(caller, User)
        if row["study"] != study:  # the same refusal as a hash that does not exist
            raise version_missing(vh)
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
        now = iso(self._clock())
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

    def get_run(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """A run and its jobs' states (members of its study, admins)."""
        with self.db.read() as c:
            run = run_row(c, caller, run_id, ROLES)
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
                    "lease_expires_at": iso(j["lease_expires_at"]) if j["state"] == "leased" else None,
                }
                for j in jobs
            ],
        }

    def cancel_run(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """Cancel a run: its queued, leased and held jobs end ``cancelled`` (coordinators, admins).

        A runner holding a lease learns it at its next renewal (409 ``cancelled``); a site
        holding a result for release, when it sends it (409 ``cancelled``).

        Returns
        -------
        dict
            ``{run_id, state, cancelled: [job_id, ...]}``.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``not_found``, ``run_final`` (the run had finished).
        """
        now = iso(self._clock())
        with self.db.write() as c:
            run = run_row(c, caller, run_id, ("coordinator",))
            if run["state"] == "done":
                raise refused(409, "run_final", f"Run {run_id} has finished; there is nothing to cancel.")
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT job_id FROM jobs WHERE run_id = ? AND state IN ('queued', 'leased', 'held')",
                    (run_id,),
                )
            ]
            c.execute(
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled', lease_expires_at = NULL, updated_at = ? "
                "WHERE run_id = ? AND state IN ('queued', 'leased', 'held')",
                (now, run_id),
            )
            if run["state"] == "running":
                c.execute(
                    "UPDATE runs SET state = 'cancelled', finished_at = ? WHERE run_id = ?", (now, run_id)
                )
                audit.append(c, caller.actor, "cancel", run_id, {"jobs": ids})
        return {"run_id": run_id, "state": "cancelled", "cancelled": ids}

    def list_runs(self, caller: Principal, study: str) -> list[dict[str, Any]]:
        """The study's runs, newest first, with their jobs' state counts (members, admins).

        Returns
        -------
        list of dict
            ``{run_id, version_hash, state, created_by, created_at, finished_at, counts}``.

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``not_found``.
        """
        with self.db.read() as c:
            study_row(c, study)
            require(c, caller, study, ROLES, admin_ok=True)
            runs = c.execute(
                "SELECT r.run_id, r.version_hash, r.state, r.created_at, r.finished_at, u.username AS created_by "
                "FROM runs r JOIN users u ON u.id = r.created_by WHERE r.study = ? "
                "ORDER BY r.created_at DESC, r.run_id",
                (study,),
            ).fetchall()
            counts: dict[str, dict[str, int]] = {}
            for j in c.execute(
                "SELECT j.run_id, j.state, count(*) FROM jobs j JOIN runs r ON r.run_id = j.run_id "
                "WHERE r.study = ? GROUP BY j.run_id, j.state",
                (study,),
            ):
                counts.setdefault(j[0], {})[j[1]] = j[2]
        return [{**dict(r), "counts": counts.get(r["run_id"], {})} for r in runs]
