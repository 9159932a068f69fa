"""Which record names the reviewed notebook allows.

A record's name is a channel of its own (a name can be made from data:
``jip.record(f"p_{patient_id}", 1)``), so a name may leave only when the reviewers saw it:

- it appears literally in the notebook's code (``jip.record("patients", ...)``), or
- it fills a template the code holds (an f-string ``f"series_{modality}"``, or a string
  constant with ``{...}`` or ``%s`` placeholders), and every placeholder is filled with a
  string or number literal of the code or a value of the run's parameters
  (``modalities = ["CT", "MR"]`` allows ``series_CT`` and ``series_MR``; a modality read
  from the data but written nowhere does not).

Names built otherwise (``"series_" + m``, ``"_".join(...)``) are not recognised.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["RecordNames"]

_MAGIC_LINE: Final = re.compile(r"^\s*[%!].*$|^.*\?\s*$", re.MULTILINE)
_F_STRING: Final = re.compile(r"""(?<![A-Za-z0-9_])[fF][rR]?("|')(.*?)(?<!\\)\1""")
_PLACEHOLDER: Final = re.compile(r"\{[^{}]*\}|%[-+ 0#]*\d*(?:\.\d+)?[sdifr]")
_MAX_TEMPLATES: Final = 500


def _scalars(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _scalars(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _scalars(v)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value)


def _template(parts: list[str | None]) -> re.Pattern[str]:
    """A regex for literal parts and placeholders (None), each placeholder a group."""
    return re.compile("".join("(.+?)" if p is None else re.escape(p) for p in parts))


class RecordNames:
    """The record names a reviewed notebook allows.

    Parameters
    ----------
    source : str
        The code of the reviewed notebook (its code cells, joined).
    parameters : mapping, optional
        The run's parameter values (they fill placeholders too).
    """

    def __init__(self, source: str, parameters: Mapping[str, Any] | None = None):
        self.source = source
        self.fills: set[str] = set(_scalars(dict(parameters or {})))
        self.templates: list[re.Pattern[str]] = []
        try:
            tree = ast.parse(_MAGIC_LINE.sub("", source))
        except SyntaxError:
            self._from_regex(source)
        else:
            self._from_tree(tree)

    def _from_tree(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float):
                if isinstance(node.value, bool):
                    continue
                self.fills.add(str(node.value))
                if isinstance(node.value, str) and _PLACEHOLDER.search(node.value):
                    self._add_text_template(node.value)
            elif isinstance(node, ast.JoinedStr):
                parts: list[str | None] = []
                for v in node.values:
                    if isinstance(v, ast.Constant) and isinstance(v.value, str):
                        parts.append(v.value)
                    else:
                        parts.append(None)
                self._add(parts)

    def _from_regex(self, source: str) -> None:
        for m in _F_STRING.finditer(source):
            self._add_text_template(m.group(2))
        self.fills.update(re.findall(r"""["']([^"'\n]{1,100})["']""", source))
        self.fills.update(re.findall(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+)?(?![A-Za-z0-9_])", source))

    def _add_text_template(self, text: str) -> None:
        parts: list[str | None] = []
        last = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.extend([text[last : m.start()], None])
            last = m.end()
        parts.append(text[last:])
        self._add(parts)

    def _add(self, parts: list[str | None]) -> None:
        if None in parts and len(self.templates) < _MAX_TEMPLATES:
            self.templates.append(_template(parts))

    def allows(self, name: str) -> bool:
        """Whether the record name ``name`` may leave.

        Examples
        --------
        >>> names = RecordNames('for m in ["CT"]:\\n    jip.record(f"series_{m}", 1)')
        >>> names.allows("series_CT"), names.allows("series_PT")
        (True, False)
        """
        if name and name in self.source:
            return True
        for template in self.templates:
            m = template.fullmatch(name)
            if m is not None and all(g in self.fills for g in m.groups()):
                return True
        return False
