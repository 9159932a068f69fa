"""Message formats between coordinator and site runners, and the fixed reason codes.

Job envelope (made and signed by the coordinator; verified by the runner)::

    {"type": "jip.job/1", "job_id": "...", "attempt": 1, "run_id": "...", "study": "...",
     "site": "site-a", "version_hash": "<sha256>", "notebook": {<canonical notebook>},
     "parameters": {...}, "issued_at": "<ISO 8601 UTC>", "expires_at": "...",
     "deadline_s": 600, "signature": {...}}

Result (made and signed by the site; verified by the coordinator)::

    {"type": "jip.result/1", "job_id": "...", "attempt": 1, "run_id": "...", "site": "...",
     "version_hash": "...", "status": "succeeded" | "failed" | "refused",
     "reason": null | <reason code>, "failed_cell": null | int, "exception": null | "ValueError",
     "outputs": [{"cell": 3, "outputs": [<nbformat outputs>]}], "records": [<records>],
     "started_at": "...", "finished_at": "...", "kernel": "jip",
     "isolation": "sandbox" | "none" | null,
     "provenance": {<see below>}, "release": null | {<see below>}, "signature": {...}}

A refused result reports what the runner saw, so its ``run_id`` and ``version_hash`` may
be null or not match the job (the coordinator accepts that for refusals only).
The envelope's ``expires_at`` is ``issued_at`` plus the coordinator's envelope lifetime
(900 s by default). A refusal carries ``"kernel": null``; a failed or refused result carries no outputs and
no records (what leaves a site is kept minimal).  ``isolation`` (optional: older runners
leave it out) says whether the kernel ran in the site's sandbox (``"sandbox"``) or, as the
site's policy allowed, without it (``"none"``); a refusal carries ``null``.

Only reason codes, cell indices and Python built-in exception class names describe a
failure across a site's boundary: never a message, a path or a traceback.

Provenance (optional in ``jip.result/1``: results of older runners lack it, and the
coordinator then shows "no provenance"; when present, the site's signature covers it)::

    "provenance": {
      "version_hash": "<sha256>",              # the notebook version that ran (as the site saw it)
      "parameters_sha256": "<sha256>",         # of the canonical JSON of the parameters
      "environment": {"digest": "<sha256>",    # of the sorted "name==version" lines of the kernel's
                      "python": "3.11.9",      #   Python and its packages (null: not determinable)
                      "packages": 123} | null,
      "data": {"series": 2,                    # series the run read (the data channel's record)
               "uids": ["<hmac>", ...],        # HMAC-SHA256(salt, SeriesInstanceUID), sorted
               "salt_sha256": "<sha256>" | null},  # commits to the salt, which stays at the site
      "audit": {"first_seq": 12,               # the site audit log's entries appended since the
                "prev": "<hash of entry 11>",  #   last result the coordinator acknowledged
                "hashes": ["<hash 12>", ...]}  #   (see audit continuity below)
    }

The salt is chosen per result and kept at the site (``jip site provenance JOB``), so the
site can later prove which series a result used; without the salt the UIDs cannot be
recovered or linked across results.

Release (set when a data steward released or rejected a result held at the site)::

    "release": {"decision": "approved" | "rejected", "stewards": 2, "decided_at": "..."}

A rejected release is sent as ``status: "failed"``, ``reason: "release_rejected"`` with no
outputs and no records: the content never leaves.  Stewards' names and comments stay at
the site.

Audit continuity: the coordinator keeps, per site, every audit entry hash it was shown,
and checks each new section against them: ``prev`` must be the hash it saw at
``first_seq - 1`` and every hash at a sequence number it saw before must be the same.
A mismatch means the site's log was rewritten or truncated; the coordinator accepts the
result, flags it (audit continuity ``break``) and records the break in its own audit log.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "FAILURE_REASONS",
    "JOB_TYPE",
    "REFUSAL_REASONS",
    "RELEASE_DECISIONS",
    "RESULT_STATUSES",
    "RESULT_TYPE",
    "builtin_exception_name",
    "parse_time",
    "redaction_line",
    "redaction_place",
    "utcnow_iso",
]

JOB_TYPE: Final = "jip.job/1"
RESULT_TYPE: Final = "jip.result/1"
RESULT_STATUSES: Final = ("succeeded", "failed", "refused")

#: Why a runner refused a job without running it.
REFUSAL_REASONS: Final = (
    "signature_invalid",  # unsigned, or the signature does not match
    "unknown_key",  # signed by a key the site does not pin
    "expired",  # past expires_at
    "replay",  # this site already ran (or refused) this job ID
    "wrong_site",  # the envelope names another site
    "hash_mismatch",  # the notebook does not hash to version_hash
    "parameters_invalid",  # unknown names or wrong types
    "policy_study",  # the site does not serve this study
    "policy_coordinator",  # the site does not serve this coordinator
    "policy_unapproved",  # the site approves versions locally, and has not approved this one
    "declined",  # the site's operator declined it
    "envelope_invalid",  # signed, but not a job envelope of this format
    "isolation_unavailable",  # the site cannot sandbox the kernel, and its policy forbids running without
)

#: Why a job that ran did not succeed.
FAILURE_REASONS: Final = (
    "cell_error",  # a cell raised
    "kernel_died",  # the kernel process ended during execution
    "timeout",  # the wall-clock deadline passed
    "cancelled",  # the run was cancelled while the job ran
    "output_invalid",  # a record does not follow the schema
    "internal_error",  # the runner itself failed
    "lease_expired",  # (set by the coordinator) leases expired max_attempts times
    "release_rejected",  # the site's data steward(s) did not release the result
)

#: What ``release.decision`` may say.
RELEASE_DECISIONS: Final = ("approved", "rejected")

_BUILTIN_EXCEPTIONS: Final = frozenset(
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
)


def builtin_exception_name(name: str | None) -> str | None:
    """``name`` when it is a Python built-in exception class, else None.

    A notebook can define an exception class named after a patient: only built-in
    names may leave a site.
    """
    return name if name in _BUILTIN_EXCEPTIONS else None


def utcnow_iso() -> str:
    """Now, as ISO 8601 UTC with a ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """Parse a time written by :func:`utcnow_iso` (or any ISO 8601 with a zone)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def redaction_place(entry: Mapping[str, Any]) -> str:
    """Where a redaction report's entry lies, as text (``cell 2, output 0``); empty when unknown."""
    return ", ".join(f"{k} {v}" for k, v in (entry.get("place") or {}).items())


def redaction_line(entry: Mapping[str, Any]) -> str:
    """One entry of a result's redaction report as a line of text.

    Examples
    --------
    >>> redaction_line({"rule": "identifier", "place": {"cell": 2, "output": 0}, "count": 3,
    ...                 "detail": "PatientName (base64)"})
    'identifier: 3 at cell 2, output 0 [PatientName (base64)]'
    """
    place = redaction_place(entry)
    detail = f" [{entry['detail']}]" if entry.get("detail") else ""
    return f"{entry.get('rule')}: {entry.get('count', 1)} at {place or '-'}{detail}"


def envelope_summary(env: Mapping[str, Any]) -> str:
    """A one-line description of an envelope for logs (no parameters: they may be sensitive)."""
    return f"job {env.get('job_id')} attempt {env.get('attempt')} of run {env.get('run_id')} ({env.get('study')})"
