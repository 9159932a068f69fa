"""Untrusted content as HTML documents for sandboxed frames: notebooks and site outputs.

A notebook comes from a scientist and a site's outputs from a site: either may hold
HTML or script meant for the reviewer's browser.  They are never put into a dashboard
page.  Each is its own document, served with
:data:`~jipkit.coordinator.dashboard.security.FRAME_CSP` (CSP ``sandbox`` without
``allow-scripts`` or ``allow-same-origin``: an opaque origin, no script, no request
out) and shown in an ``<iframe sandbox>``.  Inside:

- notebook cells (code and markdown alike) are escaped text: markdown is shown as its
  source, not rendered;
- ``text/plain`` and streams are escaped text;
- ``text/html`` is kept as it came (in the sandbox it cannot run script, send a form,
  reach the dashboard's cookies or DOM, or load anything);
- images (PNG, JPEG, GIF, SVG) are ``data:`` URIs in ``<img>``: an SVG in an image
  runs no script;
- typed records are shown as their JSON, escaped; anything else by its MIME type only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, Final

from jipkit.coordinator.dashboard.diff import reveal

__all__ = ["notebook_document", "outputs_document"]

_STYLE: Final = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0.5rem; color: #1d2330; background: #fff; }
.cell { border-left: 3px solid #c5cbd6; margin: 0 0 0.8rem; padding: 0.2rem 0.6rem; }
.cell.markdown { border-color: #7a9cc6; } .cell.params { border-color: #d08a2c; background: #fff8ec; }
.head { font: 12px/1.4 ui-monospace, monospace; color: #5b6475; margin-bottom: 0.2rem; }
pre { font: 13px/1.4 ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.md pre { font-family: system-ui, sans-serif; }
.out { margin: 0.3rem 0; } .out img { max-width: 100%; height: auto; }
.note { color: #5b6475; font-style: italic; }
"""

_B64: Final = re.compile(r"^[A-Za-z0-9+/=\s]*$")
_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/gif")
_RECORD_MIME: Final = "application/vnd.jip.record.v1+json"


def _document(title: str, body: Iterable[str]) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


def _text(value: Any) -> str:
    """nbformat text: a string or a list of strings."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def notebook_document(canon: Mapping[str, Any], title: str = "notebook") -> str:
    """A canonical notebook's cells as escaped text, one block per cell."""
    parts = []
    for i, cell in enumerate(canon.get("cells") or []):
        kind = str(cell.get("cell_type"))
        tags = [str(t) for t in cell.get("tags") or []]
        css = "params" if "parameters" in tags else ("markdown" if kind == "markdown" else "code")
        head = f"cell {i} · {kind}" + (f" · tags: {', '.join(tags)}" if tags else "")
        parts.append(
            f'<div class="cell {css}"><div class="head">{escape(head)}</div>'
            f'<div class="{"md" if kind == "markdown" else "src"}"><pre>{escape(reveal(_text(cell.get("source"))))}</pre>'
            "</div></div>"
        )
    if not parts:
        parts.append('<p class="note">This notebook has no cells.</p>')
    return _document(title, parts)


def _image(mime: str, data: Any) -> str:
    if mime == "image/svg+xml":
        encoded = base64.b64encode(_text(data).encode("utf-8")).decode("ascii")
    else:
        raw = _text(data)
        if not _B64.match(raw):
            return f'<p class="note">{escape(mime)}: not base64 data, not shown</p>'
        try:
            encoded = base64.b64encode(base64.b64decode("".join(raw.split()), validate=True)).decode("ascii")
        except (binascii.Error, ValueError):
            return f'<p class="note">{escape(mime)}: not base64 data, not shown</p>'
    return f'<img alt="{escape(mime)} output" src="data:{mime};base64,{encoded}">'


def _bundle(data: Mapping[str, Any]) -> str:
    """The richest shown form of a MIME bundle."""
    if _RECORD_MIME in data:
        record = json.dumps(data[_RECORD_MIME], ensure_ascii=False, sort_keys=True)
        return f'<div class="head">record</div><pre>{escape(record)}</pre>'
    if "text/html" in data:
        return _text(data["text/html"])  # as it came: the frame's sandbox is the boundary
    for mime in ("image/svg+xml", *_IMAGE_TYPES):
        if mime in data:
            return _image(mime, data[mime])
    if "text/plain" in data:
        return f"<pre>{escape(_text(data['text/plain']))}</pre>"
    kinds = ", ".join(sorted(str(k) for k in data))
    return f'<p class="note">output of type {escape(kinds or "none")}, not shown</p>'


def _output(out: Mapping[str, Any]) -> str:
    kind = out.get("output_type")
    if kind == "stream":
        return f'<div class="out"><div class="head">{escape(str(out.get("name")))}</div><pre>{escape(_text(out.get("text")))}</pre></div>'
    if kind in ("display_data", "execute_result"):
        data = out.get("data")
        return f'<div class="out">{_bundle(data if isinstance(data, Mapping) else {})}</div>'
    if kind == "error":
        return f'<div class="out note">error: {escape(str(out.get("ename")))}</div>'
    return f'<div class="out note">output of type {escape(str(kind))}, not shown</div>'


def outputs_document(outputs: Sequence[Mapping[str, Any]], title: str = "outputs") -> str:
    """A site's outputs (``[{cell, outputs: [nbformat output]}]``), one block per cell."""
    parts = []
    for entry in outputs:
        items = entry.get("outputs") if isinstance(entry, Mapping) else None
        if not isinstance(items, list):
            continue
        parts.append(
            f'<div class="cell"><div class="head">cell {escape(str(entry.get("cell")))}</div>'
            + "".join(_output(o) for o in items if isinstance(o, Mapping))
            + "</div>"
        )
    if not parts:
        parts.append('<p class="note">No outputs came from this site.</p>')
    return _document(title, parts)
