"""The release queue: results that wait at the site until a data steward releases them.

When a result needs release, the runner keeps it (unsigned) in the site state instead of
uploading it, and tells the coordinator that the job is held
(``POST /site/jobs/{id}/held``); the coordinator shows "held at site".  Data stewards
read it and decide with ``jip site release list|show|approve|reject``; each decision is
in the site audit log.  Once decided, the result is signed (:func:`seal_decided`) and
uploaded, by ``jip site release approve|reject`` at once or by the runner's loop:

- approved (by ``release_stewards`` different stewards): the held result as it was,
  with ``release: {decision: "approved", stewards, decided_at}``;
- rejected (by any one steward, with a comment): ``status: "failed"``,
  ``reason: "release_rejected"``, no outputs and no records: the content never leaves.

Why a result is held (:func:`hold_reasons`; the codes stay at the site):

``release_required``
    the site's policy holds every result (``federation.policy.release_required``);
``release_study``
    the policy holds every result of this study (``federation.policy.release_studies``);
the output checks' reasons
    hook for :mod:`jipkit.site.disclosure`: an outcome with ``needs_release`` true is held,
    for the codes in its ``release_reasons`` (strings, or objects with a ``reason``
    attribute such as :class:`~jipkit.site.disclosure.ReleaseReason`; ``disclosure``
    when it gives none).  Its ``redactions`` (dicts, or objects with ``to_dict()``), or the
    result document's ``redactions``, are kept as the redaction report that
    ``jip site release show`` prints.

Only succeeded results are held: a failed or refused result carries no outputs or
records, so there is nothing to release.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from jipkit.errors import CoordinatorError
from jipkit.protocol.canonical import canonical_json
from jipkit.protocol.signing import SigningKey, sign_document
from jipkit.site.client import CoordinatorClient
from jipkit.site.fedconfig import SitePolicy
from jipkit.site.state import ReleaseRecord, RunnerState

__all__ = [
    "POLICY_HOLD_REASONS",
    "deliver",
    "hold_reasons",
    "redaction_report",
    "released_document",
    "seal_decided",
]

log = logging.getLogger("jipkit.site")

#: The hold reasons that come from the site's policy (the output checks add their own).
POLICY_HOLD_REASONS: Final = ("release_required", "release_study")


def _reason_code(value: Any) -> str:
    code = getattr(value, "reason", value)
    return str(code)


def hold_reasons(policy: SitePolicy, study: str | None, outcome: object) -> list[str]:
    """Why ``outcome`` must wait for a data steward's release (empty: it may leave now).

    Parameters
    ----------
    policy : SitePolicy
        ``release_required`` and ``release_studies``.
    study : str or None
        The job's study.
    outcome : object
        The run's :class:`~jipkit.site.execute.Outcome` (or what the output checks made of
        it): read for ``status``, and for the optional ``needs_release`` and
        ``release_reasons`` attributes (see the module's notes).
    """
    if getattr(outcome, "status", None) != "succeeded":
        return []
    reasons: list[str] = []
    if policy.release_required:
        reasons.append("release_required")
    if study is not None and study in policy.release_studies:
        reasons.append("release_study")
    extra = getattr(outcome, "release_reasons", None)
    codes = (
        [_reason_code(r) for r in extra] if isinstance(extra, Iterable) and not isinstance(extra, str) else []
    )
    if getattr(outcome, "needs_release", False) or codes:
        reasons.extend(codes or ["disclosure"])
    return list(dict.fromkeys(reasons))


def redaction_report(outcome: object, document: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The output checks' redaction report, when they made one (see the module's notes)."""
    value = getattr(outcome, "redactions", None)
    if value is None:
        value = document.get("redactions")
    if value is None or isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return None
    out: list[dict[str, Any]] = []
    for item in value:
        to_dict = getattr(item, "to_dict", None)
        entry = to_dict() if callable(to_dict) else item
        if isinstance(entry, Mapping):
            out.append(dict(entry))
    return out


def released_document(rec: ReleaseRecord, audit_section: Mapping[str, Any]) -> dict[str, Any]:
    """The result document to sign for a decided release (unsigned).

    Approved: the held result, for the attempt that holds the job now.  Rejected: a
    ``failed`` / ``release_rejected`` result without outputs, records or redaction report.
    Both carry the audit entries since the last acknowledged result and the decision
    (without stewards' names or comments: those stay at the site).
    """
    doc = dict(rec.document)
    doc["attempt"] = rec.attempt
    prov = doc.get("provenance")
    doc["provenance"] = {**(prov if isinstance(prov, Mapping) else {}), "audit": dict(audit_section)}
    doc["release"] = {"decision": rec.status, "stewards": len(rec.decisions), "decided_at": rec.decided_at}
    if rec.status != "approved":
        doc.pop("redactions", None)
        doc.update(
            status="failed",
            reason="release_rejected",
            failed_cell=None,
            exception=None,
            outputs=[],
            records=[],
        )
    return doc


def seal_decided(state: RunnerState, key: SigningKey, job_ids: Iterable[str] | None = None) -> list[str]:
    """Sign every decided release not yet signed (or those of ``job_ids``) and queue it for upload.

    Returns
    -------
    list of str
        The jobs sealed now (their results wait in the state's upload queue).
    """
    wanted = None if job_ids is None else set(job_ids)
    sealed = []
    for job_id in state.unsealed():
        if wanted is not None and job_id not in wanted:
            continue

        def sign(rec: ReleaseRecord, section: dict[str, Any]) -> bytes:
            return canonical_json(sign_document(released_document(rec, section), key))

        if state.seal_release(job_id, sign) is not None:
            log.info("job %s: the release decision is signed; its result goes to the coordinator", job_id)
            sealed.append(job_id)
    return sealed


def deliver(state: RunnerState, client: CoordinatorClient, job_ids: Iterable[str]) -> dict[str, str]:
    """Upload the queued results of ``job_ids`` once each.

    Returns
    -------
    dict
        ``{job_id: "acknowledged" | "rejected" | "pending"}`` (``pending``: not reached or
        not queued; the runner sends it later).
    """
    out: dict[str, str] = {}
    for job_id in job_ids:
        rec = state.job(job_id)
        if rec is None or rec.result is None or rec.upload != "pending":
            out[job_id] = rec.upload if rec is not None and rec.upload else "pending"
            continue
        try:
            outcome = client.post_result(job_id, rec.result)
        except CoordinatorError as err:
            log.warning("job %s: the result is not delivered yet (%s); the runner sends it", job_id, err)
            out[job_id] = "pending"
            continue
        state.mark_upload(job_id, outcome)
        out[job_id] = outcome
    return out
