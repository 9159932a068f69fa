"""Results: accept a site's signed result for a job, and show a run's results.

A result is accepted from the attempt that holds the job's lease, or, for a job the site
reported ``held`` (its result waited for a data steward's release), from the held attempt
without a lease.  Its provenance is checked (:mod:`jipkit.coordinator.provenance`): the
format, and the continuity of the site's audit log, which is recorded per result and
shown with the run's results.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from jipkit.coordinator import audit
from jipkit.coordinator.access import ROLES, Principal, SitePrincipal, refused
from jipkit.coordinator.base import ServiceBase, iso
from jipkit.coordinator.leases import finish_run_if_done, holds_lease, site_job
from jipkit.coordinator.provenance import check_audit_section, check_provenance, summary
from jipkit.coordinator.runs import run_row
from jipkit.errors import CoordinatorError, NotebookError, SignatureError
from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import (
    FAILURE_REASONS,
    REFUSAL_REASONS,
    RESULT_STATUSES,
    RESULT_TYPE,
    builtin_exception_name,
)
from jipkit.protocol.records import validate_record
from jipkit.protocol.signing import key_id, verify_document

__all__ = ["ResultsMixin", "check_result"]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_result(doc: Mapping[str, Any], job: sqlite3.Row, vh: str) -> None:
    """Check a verified result against its job and the ``jip.result/1`` format; 400 ``result_invalid``."""

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


class ResultsMixin(ServiceBase):
    """Accept the sites' results; show a run's per-site results and combined records."""

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
            job = site_job(c, site, job_id)
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
        check_result(doc, job, vh)
        check_provenance(doc)
        content = sha256_hex(canonical_json({k: v for k, v in doc.items() if k != "signature"}))
        now = self._clock()
        refusal: CoordinatorError | None = None
        with self.db.write() as c:
            prior = c.execute("SELECT content_sha256 FROM results WHERE job_id = ?", (job_id,)).fetchone()
            job = site_job(c, site, job_id)
            if prior is not None and prior[0] == content:
                return {"accepted": True, "duplicate": True}
            if prior is not None:
                refusal = refused(
                    409,
                    "result_conflict",
                    f"A different result for job {job_id} was accepted first; it is final.",
                )
            elif job["state"] == "held" and job["attempt"] == doc["attempt"]:
                refusal = None  # the held attempt: released (or rejected) at the site, no lease needed
            else:
                refusal = holds_lease(job, doc["attempt"], now)
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
                        iso(now),
                    ),
                )
                c.execute(
                    "UPDATE jobs SET state = ?, reason = ?, lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                    (doc["status"], doc.get("reason"), iso(now), job_id),
                )
                prov = doc.get("provenance")
                section = prov.get("audit") if isinstance(prov, dict) else None
                release = doc.get("release")
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
                        "release": release.get("decision") if isinstance(release, dict) else None,
                    },
                )
                found = check_audit_section(c, site.name, job_id, section)
                c.execute(
                    "INSERT OR REPLACE INTO result_checks (job_id, audit_status, audit_problem, audit_first_seq, "
                    "audit_entries, audit_head) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, found.status, found.problem, found.first_seq, found.entries, found.head),
                )
                finish_run_if_done(c, job["run_id"], now)
        if refusal is not None:
            raise refusal
        return {"accepted": True, "duplicate": False}

    def run_results(self, caller: Principal, run_id: str) -> dict[str, Any]:
        """Per-site results of a run and its combined records (members, admins).

        Returns
        -------
        dict
            ``{run_id, study, version_hash, state, sites: [...], combined: [...]}``; each
            site entry holds its job's state (``held``: the result waits at the site for
            a data steward's release) and, once a result came, its status, reason,
            failed cell, exception class, records, outputs, the stewards' decision
            (``release``), how it ran (``isolation``: ``sandbox`` or ``none``), the
            site's redaction report (``redactions``: rule, place, count) and its ``provenance`` (see
            :func:`jipkit.coordinator.provenance.summary`).  ``combined`` pools the
            records of succeeded jobs (others count as missing; see
            :func:`jipkit.coordinator.aggregate.combine`).
        """
        from jipkit.coordinator.aggregate import combine

        with self.db.read() as c:
            run = run_row(c, caller, run_id, ROLES)
            rows = c.execute(
                "SELECT j.job_id, j.site, j.state, j.attempt, j.reason AS job_reason, j.updated_at, r.document, "
                "r.received_at, k.audit_status, k.audit_problem, k.audit_first_seq, k.audit_entries, k.audit_head, "
                "s.public_key FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id "
                "LEFT JOIN result_checks k ON k.job_id = j.job_id LEFT JOIN sites s ON s.name = j.site "
                "WHERE j.run_id = ? ORDER BY j.site",
                (run_id,),
            ).fetchall()
        params_sha = sha256_hex(run["parameters"].encode("utf-8"))
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
                "held_since": r["updated_at"] if r["state"] == "held" else None,
                "release": doc.get("release") if isinstance(doc.get("release"), dict) else None,
                "isolation": doc.get("isolation"),
                "redactions": doc.get("redactions") if isinstance(doc.get("redactions"), list) else [],
                "provenance": None
                if not doc
                else summary(
                    doc,
                    None if r["audit_status"] is None else dict(r),
                    pinned_key=r["public_key"],
                    run_parameters_sha256=params_sha,
                ),
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

    def result_disclosure(self, caller: Principal, run_id: str) -> dict[str, dict[str, Any]]:
        """What each site's result says about its own checks: redactions and isolation (members, admins).

        Returns
        -------
        dict
            ``{site: {redactions, isolation, kernel}}`` for the sites whose result came:
            ``redactions`` is the site's redaction report (a list of ``{rule, place,
            count}``; None when the result carries none), ``isolation`` is ``"sandbox"``,
            ``"none"`` or None (not said).
        """
        with self.db.read() as c:
            run_row(c, caller, run_id, ROLES)
            rows = c.execute(
                "SELECT j.site, r.document FROM jobs j JOIN results r ON r.job_id = j.job_id WHERE j.run_id = ?",
                (run_id,),
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            doc = json.loads(r["document"])
            redactions = doc.get("redactions")
            out[r["site"]] = {
                "redactions": [x for x in redactions if isinstance(x, dict)]
                if isinstance(redactions, list)
                else None,
                "isolation": doc.get("isolation") if isinstance(doc.get("isolation"), str) else None,
                "kernel": doc.get("kernel") if isinstance(doc.get("kernel"), str) else None,
            }
        return out
