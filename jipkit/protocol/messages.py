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
     "started_at": "...", "finished_at": "...", "kernel": "jip", "signature": {...}}

A refused result reports what the runner saw, so its ``run_id`` and ``version_hash`` may
be null or not match the job (the coordinator accepts that for refusals only).
The envelope's ``expires_at`` is ``issued_at`` plus the coordinator's envelope lifetime
(900 s by default). A refusal carries ``"kernel": null``; a failed or refused result carries no outputs and
no records (what leaves a site is kept minimal).

Only reason codes, cell indices and Python built-in exception class names describe a
failure across a site's boundary: never a message, a path or a traceback.
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
    "RESULT_STATUSES",
    "RESULT_TYPE",
    "builtin_exception_name",
    "parse_time",
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
)

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


def envelope_summary(env: Mapping[str, Any]) -> str:
    """A one-line description of an envelope for logs (no parameters: they may be sensitive)."""
    return f"job {env.get('job_id')} attempt {env.get('attempt')} of run {env.get('run_id')} ({env.get('study')})"
