"""Provenance of the sites' results: check its format, the continuity of the site audit logs.

A result's ``provenance`` (format in :mod:`jipkit.protocol.messages`) is covered by the
site's signature.  The coordinator

- checks its format when it accepts the result (:func:`check_provenance`, 400
  ``result_invalid``);
- checks the audit section against every entry hash the site's earlier results showed
  (:func:`check_audit_section`, table ``site_audit``): ``prev`` must be the hash seen at
  ``first_seq - 1`` and every hash at a sequence number seen before must be the same.
  A mismatch means the site's log was rewritten or truncated (``break``): the result is
  accepted and flagged, the break goes into the coordinator's audit log
  (``site_audit_break``), and from then on the site's new chain is the one followed, so
  one rewrite is flagged once;
- shows, with the results, what it found (:func:`summary`).

Audit continuity statuses: ``continuous``; ``first`` (the site's first section: nothing to
compare with); ``gap`` (entries between the last section seen and this one were never
shown: suspicious, not proof); ``break``; ``missing`` (the result has no audit section).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from jipkit.coordinator import audit
from jipkit.coordinator.access import refused
from jipkit.errors import SignatureError
from jipkit.protocol.messages import RELEASE_DECISIONS
from jipkit.protocol.signing import key_id, verify_document

__all__ = ["AUDIT_STATUSES", "AuditCheck", "check_audit_section", "check_provenance", "summary"]

AUDIT_STATUSES: Final = ("continuous", "first", "gap", "break", "missing")

_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
GENESIS: Final = "0" * 64


def _hex(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.match(value) is not None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_provenance(doc: Mapping[str, Any]) -> None:
    """Check the format of a result's ``provenance`` and ``release`` (absent is allowed).

    Raises
    ------
    CoordinatorError
        400 ``result_invalid``.
    """

    def bad(msg: str) -> Exception:
        return refused(400, "result_invalid", f"provenance: {msg}")

    release = doc.get("release")
    if release is not None:
        if not isinstance(release, Mapping) or release.get("decision") not in RELEASE_DECISIONS:
            raise bad(f"expected release as null or {{decision: {' | '.join(RELEASE_DECISIONS)}, ...}}")
        if not _int(release.get("stewards")) or release["stewards"] < 1:
            raise bad("expected release.stewards as a positive integer")
        if release["decision"] == "rejected" and (
            doc.get("status") != "failed" or doc.get("reason") != "release_rejected"
        ):
            raise bad("a rejected release is sent as failed / release_rejected")
    prov = doc.get("provenance")
    if prov is None:
        return
    if not isinstance(prov, Mapping):
        raise bad("expected an object")
    for name in ("version_hash", "parameters_sha256"):
        if prov.get(name) is not None and not _hex(prov.get(name)):
            raise bad(f"expected {name} as 64 hex digits or null")
    if doc.get("status") != "refused" and prov.get("version_hash") != doc.get("version_hash"):
        raise bad("version_hash is not the result's")
    env = prov.get("environment")
    if env is not None and (not isinstance(env, Mapping) or not _hex(env.get("digest"))):
        raise bad("expected environment as null or {digest, python, packages}")
    data = prov.get("data")
    if data is not None:
        if (
            not isinstance(data, Mapping)
            or not _int(data.get("series"))
            or not isinstance(data.get("uids"), list)
        ):
            raise bad("expected data as {series, uids, salt_sha256}")
        if len(data["uids"]) != data["series"] or not all(_hex(u) for u in data["uids"]):
            raise bad("expected data.uids as one salted hash (64 hex digits) per series")
    section = prov.get("audit")
    if section is not None:
        if not isinstance(section, Mapping) or not _int(section.get("first_seq")) or section["first_seq"] < 1:
            raise bad("expected audit as {first_seq, prev, hashes}")
        if not _hex(section.get("prev")) or not isinstance(section.get("hashes"), list):
            raise bad("expected audit.prev as a hash and audit.hashes as a list")
        if not all(_hex(h) for h in section["hashes"]):
            raise bad("expected audit.hashes as hashes (64 hex digits)")


@dataclass(frozen=True)
class AuditCheck:
    """What :func:`check_audit_section` found."""

    status: str
    problem: str | None = None
    first_seq: int | None = None
    entries: int = 0
    head: str | None = None


def check_audit_section(
    c: sqlite3.Connection, site: str, job_id: str, section: Mapping[str, Any] | None
) -> AuditCheck:
    """Check a result's audit section against what the site showed before; remember it.

    Call inside the write transaction that accepts the result.  A ``break`` or ``gap``
    is appended to the coordinator's audit log (``site_audit_break`` / ``site_audit_gap``).
    """
    if section is None:
        return AuditCheck("missing")
    first, prev, hashes = int(section["first_seq"]), str(section["prev"]), [str(h) for h in section["hashes"]]
    last = first + len(hashes) - 1
    head = hashes[-1] if hashes else prev
    top = c.execute("SELECT max(seq) FROM site_audit WHERE site = ?", (site,)).fetchone()[0]
    known = {
        int(r[0]): str(r[1])
        for r in c.execute(
            "SELECT seq, hash FROM site_audit WHERE site = ? AND seq BETWEEN ? AND ?", (site, first - 1, last)
        )
    }
    problem: str | None = None
    status = "continuous"
    if first == 1 and prev != GENESIS:
        problem = "its first entry does not start a chain"
    elif first > 1 and first - 1 in known and known[first - 1] != prev:
        problem = f"entry {first - 1} is not the one shown before: the log was rewritten"
    else:
        for i, h in enumerate(hashes):
            if known.get(first + i, h) != h:
                problem = f"entry {first + i} is not the one shown before: the log was rewritten or truncated"
                break
    if problem is not None:
        status = "break"
    elif top is None:
        status = "first"
    elif first - 1 > top:
        status, problem = "gap", f"entries {top + 1} to {first - 1} were never shown"
    if status == "break":
        old_head = c.execute(
            "SELECT seq, hash FROM site_audit WHERE site = ? ORDER BY seq DESC LIMIT 1", (site,)
        ).fetchone()
        audit.append(
            c,
            "coordinator",
            "site_audit_break",
            job_id,
            {
                "site": site,
                "problem": problem,
                "seen_seq": old_head[0] if old_head else None,
                "seen_head": old_head[1] if old_head else None,
                "first_seq": first,
                "head": head,
            },
        )
        c.execute("DELETE FROM site_audit WHERE site = ?", (site,))  # follow the new chain from here
    elif status == "gap":
        audit.append(
            c, "coordinator", "site_audit_gap", job_id, {"site": site, "problem": problem, "first_seq": first}
        )
    rows = [(site, first + i, h, job_id) for i, h in enumerate(hashes)]
    if first > 1:
        rows.insert(0, (site, first - 1, prev, job_id))
    c.executemany("INSERT OR IGNORE INTO site_audit (site, seq, hash, job_id) VALUES (?, ?, ?, ?)", rows)
    return AuditCheck(status, problem, first, len(hashes), head)


def summary(
    doc: Mapping[str, Any],
    check: Mapping[str, Any] | None,
    *,
    pinned_key: str | None,
    run_parameters_sha256: str,
) -> dict[str, Any]:
    """How a stored result's provenance shows in a run's results.

    Parameters
    ----------
    doc : mapping
        The stored signed result.
    check : mapping or None
        Its ``result_checks`` row (None for results stored before version 2).
    pinned_key : str or None
        The site's pinned public key: the signature is verified again now.
    run_parameters_sha256 : str
        The SHA-256 of the run's canonical parameters.
    """
    warnings: list[str] = []
    sig = doc.get("signature")
    kid = sig.get("key_id") if isinstance(sig, Mapping) else None
    try:
        ok = pinned_key is not None and bool(verify_document(doc, {key_id(pinned_key): pinned_key}))
    except SignatureError:
        ok = False
    if not ok:
        warnings.append("the site's signature does not verify")
    prov = doc.get("provenance")
    prov = prov if isinstance(prov, Mapping) else None
    if prov is None:
        warnings.append("no provenance")
    env = prov.get("environment") if prov else None
    data = prov.get("data") if prov else None
    params = prov.get("parameters_sha256") if prov else None
    match = None if params is None else params == run_parameters_sha256
    if match is False and doc.get("status") != "refused":
        warnings.append("the parameters the site ran are not the run's")
    audit_status = check["audit_status"] if check else "missing"
    if audit_status == "break":
        warnings.append(f"site audit log break: {check['audit_problem'] if check else ''}")
    elif audit_status == "gap":
        warnings.append(f"site audit log gap: {check['audit_problem'] if check else ''}")
    elif audit_status == "missing" and prov is not None:
        warnings.append("no site audit section")
    return {
        "present": prov is not None,
        "version_hash": prov.get("version_hash") if prov else None,
        "parameters_sha256": params,
        "parameters_match": match,
        "environment_digest": env.get("digest") if isinstance(env, Mapping) else None,
        "environment": dict(env) if isinstance(env, Mapping) else None,
        "series": data.get("series") if isinstance(data, Mapping) else None,
        "signature": {"ok": ok, "key_id": kid},
        "audit": {
            "status": audit_status,
            "problem": check["audit_problem"] if check else None,
            "first_seq": check["audit_first_seq"] if check else None,
            "entries": check["audit_entries"] if check else 0,
            "head": check["audit_head"] if check else None,
        },
        "warnings": warnings,
    }
