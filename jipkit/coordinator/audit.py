"""The append-only audit log: every state change, each entry chained to the one before.

An entry's ``hash`` is the SHA-256 of the canonical JSON of its id, time, actor, action,
subject, data and ``prev_hash`` (the previous entry's hash; 64 zeros for the first).
Changing, inserting or deleting an entry anywhere but at the end breaks the chain at
that entry, which :func:`verify_chain` reports.  Deleting entries at the end leaves a
valid shorter chain: compare :func:`head` with a copy kept elsewhere to detect that.

Entries are appended inside the transaction of the change they record, so the log and
the state never disagree.  Data holds identifiers and hashes, never secrets or
parameter values (those may be sensitive): parameters appear as their SHA-256.

Actions: ``user``, ``role``, ``study``, ``site``, ``enrol``, ``submission``, ``review``,
``approval``, ``run``, ``signature``, ``claim``, ``lease_expiry``, ``held``, ``result``,
``refusal``, ``decline``, ``cancel``, ``run_done``, ``site_audit_break`` and
``site_audit_gap`` (a result showed that its site's audit log was rewritten or truncated,
or skipped entries: see :mod:`jipkit.coordinator.provenance`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from jipkit.protocol.canonical import canonical_json, sha256_hex
from jipkit.protocol.messages import utcnow_iso

__all__ = ["GENESIS", "ChainCheck", "append", "entries", "head", "verify_chain"]

GENESIS: Final = "0" * 64


def _entry_hash(id_: int, at: str, actor: str, action: str, subject: str, data: str, prev: str) -> str:
    body = {
        "id": id_,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "data": data,
        "prev": prev,
    }
    return sha256_hex(canonical_json(body))


def append(
    conn: sqlite3.Connection, actor: str, action: str, subject: str, data: Mapping[str, Any] | None = None
) -> str:
    """Append one entry; call inside the write transaction of the change it records.

    Parameters
    ----------
    conn : sqlite3.Connection
        A connection inside a ``BEGIN IMMEDIATE`` transaction (which serialises appends).
    actor : str
        Who: ``user:<name>``, ``site:<name>``, ``admin-cli`` or ``coordinator``.
    action : str
        What kind of change (see the module's list).
    subject : str
        What changed: a study, version hash, run ID or job ID.
    data : mapping, optional
        JSON-able details (no secrets).

    Returns
    -------
    str
        The new entry's hash.
    """
    row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    id_, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    at = utcnow_iso()
    text = canonical_json(dict(data or {})).decode()
    digest = _entry_hash(id_, at, actor, action, subject, text, prev)
    conn.execute(
        "INSERT INTO audit (id, at, actor, action, subject, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (id_, at, actor, action, subject, text, prev, digest),
    )
    return digest


@dataclass(frozen=True)
class ChainCheck:
    """What :func:`verify_chain` found.

    Attributes
    ----------
    ok : bool
        Every entry hashes to its ``hash`` and names its predecessor's.
    entries : int
        Entries checked.
    bad_id : int or None
        The first entry where the chain breaks.
    problem : str or None
        What is wrong there.
    head : str
        The last entry's hash (64 zeros for an empty log).
    """

    ok: bool
    entries: int
    bad_id: int | None = None
    problem: str | None = None
    head: str = GENESIS

    def __bool__(self) -> bool:
        return self.ok


def verify_chain(conn: sqlite3.Connection) -> ChainCheck:
    """Recompute every entry's hash and check the links between entries.

    Returns
    -------
    ChainCheck
        ``ok`` false, with the first broken entry, when a row was changed, inserted or
        deleted (except at the end of the log).
    """
    prev, expected_id, count = GENESIS, 1, 0
    for row in conn.execute(
        "SELECT id, at, actor, action, subject, data, prev_hash, hash FROM audit ORDER BY id"
    ):
        id_, at, actor, action, subject, data, prev_hash, digest = tuple(row)
        if id_ != expected_id:
            return ChainCheck(False, count, id_, f"entry {expected_id} is missing before entry {id_}", prev)
        if prev_hash != prev:
            return ChainCheck(False, count, id_, "prev_hash does not match the previous entry's hash", prev)
        if _entry_hash(id_, at, actor, action, subject, data, prev_hash) != digest:
            return ChainCheck(False, count, id_, "the entry was changed after it was written", prev)
        prev, expected_id, count = digest, expected_id + 1, count + 1
    return ChainCheck(True, count, head=prev)


def head(conn: sqlite3.Connection) -> str:
    """The last entry's hash: keep a copy elsewhere to detect truncation later."""
    row = conn.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return str(row[0]) if row else GENESIS


def entries(conn: sqlite3.Connection, subject: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Audit entries, oldest first (optionally only those about ``subject``)."""
    sql = "SELECT id, at, actor, action, subject, data FROM audit"
    args: tuple[Any, ...] = ()
    if subject is not None:
        sql += " WHERE subject = ?"
        args = (subject,)
    rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]
