"""A notebook version as text, and the unified diff between two versions (:mod:`difflib`).

The text form lists each cell with a header line (``# ---- cell 2 [code] tags: parameters``)
and its source, so a diff shows which cell changed.  The dashboard shows it as escaped
text.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DiffLine", "notebook_lines", "previous_version", "unified_diff"]


def notebook_lines(canon: Mapping[str, Any]) -> list[str]:
    """The canonical notebook as lines: a header per cell, then its source."""
    lines: list[str] = []
    for i, cell in enumerate(canon.get("cells") or []):
        tags = cell.get("tags") or []
        header = f"# ---- cell {i} [{cell.get('cell_type')}]" + (f" tags: {', '.join(tags)}" if tags else "")
        lines.append(header)
        lines.extend(str(cell.get("source", "")).splitlines())
    return lines


class DiffLine:
    """One line of a unified diff and its kind: ``add``, ``del``, ``hunk``, ``file`` or ``same``."""

    __slots__ = ("kind", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        if text.startswith(("+++", "---")):
            self.kind = "file"
        elif text.startswith("@@"):
            self.kind = "hunk"
        elif text.startswith("+"):
            self.kind = "add"
        elif text.startswith("-"):
            self.kind = "del"
        else:
            self.kind = "same"


def unified_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], old_label: str, new_label: str, context: int = 3
) -> list[DiffLine]:
    """The unified diff from ``old`` to ``new`` (canonical notebooks); empty when they are the same."""
    lines = difflib.unified_diff(
        notebook_lines(old), notebook_lines(new), old_label, new_label, n=context, lineterm=""
    )
    return [DiffLine(line) for line in lines]


def previous_version(versions: Sequence[Mapping[str, Any]], vh: str) -> str | None:
    """The version this one follows: the latest earlier version of the study with the same title.

    Parameters
    ----------
    versions : sequence of dict
        The study's versions (``version_hash``, ``title``, ``submitted_at``), as
        :meth:`~jipkit.coordinator.service.Service.list_notebooks` returns them.
    vh : str
        The version.

    Returns
    -------
    str or None
        None for the first version of a notebook (no earlier version has its title).
    """
    this = next((v for v in versions if v["version_hash"] == vh), None)
    if this is None:
        return None
    earlier = [
        v
        for v in versions
        if v["version_hash"] != vh
        and v["title"] == this["title"]
        and v["submitted_at"] < this["submitted_at"]
    ]
    return max(earlier, key=lambda v: v["submitted_at"])["version_hash"] if earlier else None
