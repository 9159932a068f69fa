"""Checks on a job envelope before anything runs: the site's word, not the coordinator's.

:func:`check_envelope` applies, in this order, and stops at the first that fails:

==================  =====================================================================
reason              check
==================  =====================================================================
unknown_key         the signature's key ID is not among the site's pinned coordinator keys
signature_invalid   unsigned, or the signature does not match
envelope_invalid    signed, but not a job envelope of this format
wrong_site          the envelope names another site
expired             ``expires_at`` has passed (this machine's clock)
hash_mismatch       the notebook is not in canonical form or does not hash to ``version_hash``
replay              this site already ran or refused this job ID (see :mod:`jipkit.site.state`)
parameters_invalid  unknown parameter names or wrong JSON types for the version's schema
policy_coordinator  the site does not serve the signing coordinator key
policy_study        the site does not serve the study
policy_unapproved   the site approves versions locally and has not approved this one
==================  =====================================================================

Each refusal is logged at the site with its detail; only the reason code leaves it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from jipkit.errors import NotebookError, SignatureError
from jipkit.protocol.messages import JOB_TYPE, envelope_summary, parse_time
from jipkit.protocol.notebook import (
    canonical_notebook,
    check_parameters,
    parameter_schema,
    to_nbformat,
    version_hash,
)
from jipkit.protocol.signing import verify_document
from jipkit.site.fedconfig import SitePolicy
from jipkit.site.state import Prior, RunnerState, job_digest

__all__ = ["AUTHENTICATED_REFUSALS", "check_envelope", "envelope_ids"]

log = logging.getLogger("jipkit.site")

#: Refusals of envelopes that are signed by a pinned key and name this site: only these
#: are recorded against the job ID (a forged envelope must not burn a real job's ID).
AUTHENTICATED_REFUSALS = frozenset(
    {
        "expired",
        "hash_mismatch",
        "replay",
        "parameters_invalid",
        "policy_coordinator",
        "policy_study",
        "policy_unapproved",
    }
)

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "job_id": str,
    "attempt": int,
    "run_id": str,
    "study": str,
    "site": str,
    "version_hash": str,
    "notebook": dict,
    "parameters": dict,
    "expires_at": str,
    "deadline_s": (int, float),
}


def envelope_ids(envelope: Any) -> tuple[str, int] | None:
    """``(job_id, attempt)`` when the envelope has them with the right types, else None."""
    if not isinstance(envelope, Mapping):
        return None
    job_id, attempt = envelope.get("job_id"), envelope.get("attempt")
    if isinstance(job_id, str) and job_id and isinstance(attempt, int) and not isinstance(attempt, bool):
        return job_id, attempt
    return None


def _malformed(envelope: Mapping[str, Any]) -> str | None:
    if envelope.get("type") != JOB_TYPE:
        return f"type is {envelope.get('type')!r}, expected {JOB_TYPE!r}"
    for name, kind in _FIELDS.items():
        value = envelope.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} is missing or of type {type(value).__name__}"
    if envelope["attempt"] < 1 or envelope["deadline_s"] <= 0:
        return "attempt or deadline_s is not positive"
    return None


def _refuse(envelope: Any, reason: str, detail: str) -> str:
    what = (
        envelope_summary(dict(envelope))
        if isinstance(envelope, Mapping)
        else "a job that is not a JSON object"
    )
    log.warning("refusing %s: %s (%s)", what, reason, detail)
    return reason


def check_envelope(
    envelope: Any,
    *,
    site: str,
    pinned_keys: Mapping[str, str],
    policy: SitePolicy,
    state: RunnerState,
    now: dt.datetime | None = None,
) -> str | None:
    """The reason to refuse ``envelope``, or None when it may run here.

    Parameters
    ----------
    envelope : object
        The job envelope as received (any JSON value: nothing about it is trusted).
    site : str
        This site's name.
    pinned_keys : mapping
        ``{key_id: public_key_base64}`` of the coordinator keys this site trusts.
    policy : SitePolicy
        Which coordinators and studies this site serves, and whether it approves
        versions locally.
    state : RunnerState
        The runner's state, for replay protection and local approvals.
    now : datetime, optional
        The time to check expiry against (default: this machine's clock, UTC).

    Returns
    -------
    str or None
        A code from :data:`jipkit.protocol.messages.REFUSAL_REASONS`, or None.
    """
    if not isinstance(envelope, Mapping):
        return _refuse(envelope, "signature_invalid", "not a signed JSON object")
    sig = envelope.get("signature")
    kid = sig.get("key_id") if isinstance(sig, Mapping) else None
    if isinstance(kid, str) and kid and kid not in pinned_keys:
        return _refuse(envelope, "unknown_key", f"signed by key {kid}, which this site does not pin")
    try:
        signer = verify_document(envelope, pinned_keys)
    except SignatureError as err:
        return _refuse(envelope, "signature_invalid", str(err))
    problem = _malformed(envelope)
    if problem:  # signed, yet not a job envelope: never act on it
        return _refuse(envelope, "envelope_invalid", f"signed, but not a job envelope: {problem}")

    if envelope["site"] != site:
        return _refuse(envelope, "wrong_site", f"addressed to site {envelope['site']!r}, this is {site!r}")

    try:
        expires = parse_time(envelope["expires_at"])
        expired = expires <= (now or dt.datetime.now(dt.UTC))
    except (ValueError, TypeError):
        expired = True
    if expired:
        return _refuse(envelope, "expired", f"expires_at {envelope['expires_at']!r} has passed")

    canon = envelope["notebook"]
    try:
        canonical = canonical_notebook(to_nbformat(canon)) == canon
        matches = canonical and version_hash(canon) == envelope["version_hash"]
    except (NotebookError, KeyError, TypeError, AttributeError, ValueError):
        matches = False
    if not matches:
        return _refuse(envelope, "hash_mismatch", "the notebook does not hash to version_hash")

    if state.prior(envelope["job_id"], envelope["attempt"], job_digest(envelope)) is Prior.REPLAY:
        return _refuse(envelope, "replay", "this site already acted on this job")

    try:
        check_parameters(parameter_schema(canon), envelope["parameters"])
    except NotebookError as err:
        return _refuse(envelope, "parameters_invalid", str(err))

    if signer not in policy.coordinators:
        return _refuse(envelope, "policy_coordinator", f"this site does not serve coordinator key {signer}")
    if envelope["study"] not in policy.studies:
        return _refuse(envelope, "policy_study", f"this site does not serve study {envelope['study']!r}")
    if policy.local_approval and not state.is_approved(envelope["version_hash"]):
        return _refuse(
            envelope,
            "policy_unapproved",
            f"version {envelope['version_hash']} is not approved here: `jip site approve {envelope['version_hash']}`",
        )
    return None
