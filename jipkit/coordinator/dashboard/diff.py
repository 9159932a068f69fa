"""A notebook version as text, and the unified diff between two versions (:mod:`difflib`).

The text form lists each cell with a header line (``# ---- cell 2 [code] tags: parameters``)
and its source, so a diff shows which cell changed.  The dashboard shows it as escaped
text.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DiffLine", "notebook_lines", "previous_version", "reveal", "unified_diff"]


#: Characters that make code read differently from how it runs ("Trojan Source": bidi
#: controls) or hide text (zero-width characters): shown as ``<U+202E>`` wherever the
#: dashboard shows notebook source.
INVISIBLE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")

#: Every source line starts with this in the diff's text, so that no line of a cell can
#: pass for a cell header (which starts with ``#``) or a diff header.
SOURCE_PREFIX = "| "


def reveal(text: str) -> str:
    """``text`` with bidi controls and zero-width characters made visible.

    Examples
    --------
    >>> reveal("a\u202eb")
    'a<U+202E>b'
    """
    return INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def notebook_lines(canon: Mapping[str, Any]) -> list[str]:
    """The canonical notebook as lines: a header per cell, then its source lines (prefixed)."""
    lines: list[str] = []
    for i, cell in enumerate(canon.get("cells") or []):
        tags = cell.get("tags") or []
        header = f"# ---- cell {i} [{cell.get('cell_type')}]" + (f" tags: {', '.join(tags)}" if tags else "")
        lines.append(reveal(header))
        lines.extend(SOURCE_PREFIX + reveal(line) for line in str(cell.get("source", "")).splitlines())
    return lines


class DiffLine:
    """One line of a unified diff and its kind: ``add``, ``del``, ``hunk``, ``file`` or ``same``."""

    __slots__ = ("kind", "text")

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        self.kind = kind


def _kind(text: str) -> str:
    if text.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(text[:1], "same")


def unified_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], old_label: str, new_label: str, context: int = 3
) -> list[DiffLine]:
    """The unified diff from ``old`` to ``new`` (canonical notebooks); empty when they are the same.

    Only difflib's first two lines are file headers: a line's kind never depends on what a
    notebook's author wrote (an added ``++x`` is an added line, not a header).
    """
    lines = difflib.unified_diff(
        notebook_lines(old), notebook_lines(new), old_label, new_label, n=context, lineterm=""
    )
    return [DiffLine(line, "file" if i < 2 else _kind(line)) for i, line in enumerate(lines)]


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
