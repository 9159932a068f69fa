"""Notebook versions of a study and their reviews, up to approval or rejection."""

from __future__ import annotations

import json
import sqlite3
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
    roles_of,
    study_row,
)
from jipkit.coordinator.base import ServiceBase, iso
from jipkit.errors import CoordinatorError, NotebookError
from jipkit.protocol.canonical import canonical_json
from jipkit.protocol.notebook import canonical_notebook, parameter_schema, version_hash

__all__ = ["ReviewsMixin", "version_missing", "version_row", "version_summary", "visible_version"]


def version_missing(vh: str) -> CoordinatorError:
    """The refusal for a version hash that does not exist, or that the caller may not know of."""
    return refused(404, "not_found", f"No notebook version {vh!r}. List them: jip notebook list --study S")


def version_row(c: sqlite3.Connection, vh: str) -> sqlite3.Row:
    """The version's row with its author and study's quorum; 404 ``not_found`` when there is none."""
    row = c.execute(
        "SELECT v.*, u.username AS author, s.review_quorum FROM notebook_versions v "
        "JOIN users u ON u.id = v.author_id JOIN studies s ON s.name = v.study WHERE v.version_hash = ?",
        (vh,),
    ).fetchone()
    if row is None:
        raise version_missing(vh)
    return row  # type: ignore[no-any-return]


def visible_version(
    c: sqlite3.Connection, caller: Principal, vh: str, roles: Sequence[str], *, admin_ok: bool
) -> sqlite3.Row:
    """The version's row (see :func:`version_row`) for a caller holding one of ``roles`` in its study.

    A caller with no role in the version's study gets the same 404 ``not_found`` as for a
    hash that does not exist (see :func:`~jipkit.coordinator.access.require_visible`); a
    member without one of ``roles``, 403 ``forbidden``.
    """
    require_user(caller)
    row = version_row(c, vh)
    require_visible(c, caller, row["study"], roles, admin_ok=admin_ok, missing=version_missing(vh))
    return row


def version_summary(c: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    """A version's summary: its state, review tally and parameter schema."""
    tally = dict(
        c.execute(
            "SELECT decision, count(*) FROM reviews WHERE version_hash = ? GROUP BY decision",
            (row["version_hash"],),
        ).fetchall()
    )
    return {
        "version_hash": row["version_hash"],
        "study": row["study"],
        "title": row["title"],
        "author": row["author"],
        "state": row["state"],
        "approvals": tally.get("approve", 0),
        "rejections": tally.get("reject", 0),
        "review_quorum": row["review_quorum"],
        "parameters": json.loads(row["parameter_schema"]),
        "submitted_at": row["submitted_at"],
    }


class ReviewsMixin(ServiceBase):
    """Submit notebook versions, list and read them, review them."""

    def submit_notebook(
        self, caller: Principal, study: str, notebook: Mapping[str, Any] | str
    ) -> dict[str, Any]:
        """Submit a notebook as a version of a study (scientists of the study).

        The same notebook again returns the existing version (``existing: true``).

        Returns
        -------
        dict
            ``{version_hash, parameters, state, existing}``.

        Raises
        ------
        NotebookError
            Malformed notebook or parameters cell.
        CoordinatorError
            ``forbidden``, ``not_found``, ``version_in_other_study``.
        """
        with self.db.read() as c:
            study_row(c, study)
            require(c, caller, study, ("scientist",), admin_ok=False)
        assert isinstance(caller, User)
        canon = canonical_notebook(notebook)
        schema = parameter_schema(canon)
        vh = version_hash(canon)
        try:
            schema_json = json.dumps(schema, allow_nan=False)  # in the cell's order
        except ValueError as err:
            raise NotebookError("Parameter defaults must be finite numbers (no NaN or Infinity).") from err
        title = next(
            (
                line.lstrip("#").strip()
                for cell in canon["cells"]
                if cell["cell_type"] == "markdown"
                for line in cell["source"].splitlines()
                if line.startswith("#")
            ),
            "",
        )[:200]
        with self.db.write() as c:
            row = c.execute(
                "SELECT study, state FROM notebook_versions WHERE version_hash = ?", (vh,)
            ).fetchone()
            if row is not None:
                if row["study"] != study:
                    # Name the other study only to its members (and admins).
                    where = (
                        f"study {row['study']!r}"
                        if caller.is_admin or roles_of(c, caller, row["study"])
                        else "another study"
                    )
                    raise refused(
                        409,
                        "version_in_other_study",
                        f"This exact notebook is version {vh[:12]} of {where}; a version "
                        "belongs to one study. Change the notebook (a new version) to submit it here.",
                    )
                return {"version_hash": vh, "parameters": schema, "state": row["state"], "existing": True}
            c.execute(
                "INSERT INTO notebook_versions VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    vh,
                    study,
                    caller.id,
                    title,
                    canonical_json(canon).decode(),
                    schema_json,
                    iso(self._clock()),
                ),
            )
            audit.append(c, caller.actor, "submission", vh, {"study": study})
        return {"version_hash": vh, "parameters": schema, "state": "pending", "existing": False}

    def list_notebooks(self, caller: Principal, study: str) -> list[dict[str, Any]]:
        """The study's versions with their review state, newest first (any member, admins)."""
        with self.db.read() as c:
            study_row(c, study)
            require(c, caller, study, ROLES, admin_ok=True)
            rows = c.execute(
                "SELECT v.*, u.username AS author, s.review_quorum FROM notebook_versions v "
                "JOIN users u ON u.id = v.author_id JOIN studies s ON s.name = v.study "
                "WHERE v.study = ? ORDER BY v.submitted_at DESC",
                (study,),
            ).fetchall()
            return [version_summary(c, r) for r in rows]

    def get_notebook(self, caller: Principal, vh: str) -> dict[str, Any]:
        """A version: its summary, canonical notebook and reviews (members of its study, admins)."""
        with self.db.read() as c:
            row = visible_version(c, caller, vh, ROLES, admin_ok=True)
            reviews = c.execute(
                "SELECT u.username AS reviewer, r.decision, r.comment, r.reviewed_at FROM reviews r "
                "JOIN users u ON u.id = r.reviewer_id WHERE r.version_hash = ? ORDER BY r.reviewed_at",
                (vh,),
            ).fetchall()
            out = version_summary(c, row)
        out["notebook"] = json.loads(row["canonical"])
        out["reviews"] = [dict(r) for r in reviews]
        return out

    def review(self, caller: Principal, vh: str, decision: str, comment: str = "") -> dict[str, Any]:
        """Approve or reject a version (reviewers of its study other than its author).

        A reviewer's later review replaces their earlier one.  The version is approved
        once ``review_quorum`` reviewers approve and none rejects; any rejection rejects it.

        Returns
        -------
        dict
            The version's summary (state, approvals, quorum).

        Raises
        ------
        CoordinatorError
            ``forbidden``, ``self_review``, ``not_found``, ``request_invalid``.
        """
        if decision not in ("approve", "reject"):
            raise refused(400, "request_invalid", f"Expected decision approve or reject, found {decision!r}.")
        with self.db.read() as c:
            row = visible_version(c, caller, vh, ("reviewer",), admin_ok=False)
        assert isinstance(caller, User)
        if row["author_id"] == caller.id:
            err = refused(403, "self_review", "The author of a notebook version cannot review it.")
            self._audit_refusal(caller.actor, vh, err)
            raise err
        with self.db.write() as c:
            c.execute(
                "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
                (vh, caller.id, decision, comment[:2000], iso(self._clock())),
            )
            audit.append(c, caller.actor, "review", vh, {"decision": decision})
            tally = dict(
                c.execute(
                    "SELECT decision, count(*) FROM reviews WHERE version_hash = ? GROUP BY decision", (vh,)
                ).fetchall()
            )
            if tally.get("reject", 0):
                state = "rejected"
            elif tally.get("approve", 0) >= row["review_quorum"]:
                state = "approved"
            else:
                state = "pending"
            if state != row["state"]:
                c.execute("UPDATE notebook_versions SET state = ? WHERE version_hash = ?", (state, vh))
                audit.append(
                    c, "coordinator", "approval", vh, {"state": state, "approvals": tally.get("approve", 0)}
                )
            return version_summary(c, version_row(c, vh))
