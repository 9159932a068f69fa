"""Decoded views of a text: what hides in it hex-, base64-, URL- or escape-encoded, and markup's text.

The identifier matcher scans each view as it scans plain text, so every transformation
it recognises in plain text (case, accents, separators, name order) is recognised
inside an encoding too.  Decoding the text (rather than adding the encoded form of
every identifier as a pattern) is what makes that possible: base64 of ``"MÜLLER,
jürgen"`` shares nothing with base64 of ``"Müller^Jürgen"``.

Candidates:

``base64``
    Every run of at least 6 characters of the base64 alphabets (standard and URL-safe;
    6 characters are 4 bytes, the shortest identifier searched for), decoded at all
    four character offsets: that covers the three byte alignments of the encoded value
    and any junk put before it.  Runs of digits only are not decoded as base64 (base64
    of UTF-8 text always holds letters); those of 8 digits or more are decoded as hex.
``hex``
    Every run of at least 8 hex digits, decoded at both nibble offsets.
``url``, ``escape``, ``entity``
    Each line holding a ``%XX`` escape, a ``\\xNN``/``\\uNNNN``/``\\t`` escape, or
    an HTML character reference, decoded as a whole (so a name split by spaces stays
    whole).

Decoded bytes are read as UTF-8; bytes that are not UTF-8 but look like ISO 8859-1 text
(DICOM's ``ISO_IR 100``), or with many 0 bytes at every other place (UTF-16 of text
with Latin letters), are read
that way too.  Runs of 1024 characters or more are not decoded: they are blobs, removed
whatever they hold (:mod:`jipkit.site.disclosure.blobs`).  Decoded text is searched again (two levels
of nesting: base64 of hex is found).
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from jipkit.site.disclosure.tokens import ByteText, prefix_key, prefix_keys

__all__ = [
    "ACTIVE_TAGS",
    "MAX_DECODED_RUN",
    "Markup",
    "candidate_positions",
    "candidates",
    "decode_candidate",
    "decode_lines",
    "markup_parts",
    "markup_text",
]

#: Runs this long or longer are left to the blob rules.
MAX_DECODED_RUN: Final = 1024
#: Four bytes (the shortest identifier searched for) are six base64 characters without padding.
_MIN_RUN: Final = 6

_HEX_RUN: Final = re.compile(r"[0-9A-Fa-f]{8,}")
_URL_SAFE: Final = str.maketrans("-_", "+/")
_URL_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_BACKSLASH_ESCAPE: Final = re.compile(r"\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[tnr])")
_ESCAPED_SPACE: Final = re.compile(r"\\[tnr]")
_ESCAPED_POINT: Final = re.compile(r"\\(?:x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))")
_ESCAPED_BYTE: Final = re.compile(rb"\\x([0-9A-Fa-f]{2})")
_ENTITY: Final = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_NAME_CHARS: Final = np.zeros(256, dtype=bool)
_NAME_CHARS[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-:_./")] = True
_LETTERS: Final = np.zeros(256, dtype=bool)
_LETTERS[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")] = True
#: Tag names of HTML and SVG (and of the metadata matplotlib writes into SVG).
_TAG_NAMES: Final = (
    "a abbr address article aside b bdi bdo blockquote body br caption cite code col colgroup "
    "data dd del details dfn div dl dt em figcaption figure footer h1 h2 h3 h4 h5 h6 head header hr "
    "html i img ins kbd label legend li main mark nav ol p pre q s samp section small span strong "
    "style sub summary sup table tbody td tfoot th thead time title tr u ul var wbr "
    "svg g defs use symbol path rect circle ellipse line polyline polygon text tspan textpath "
    "clippath mask pattern marker image lineargradient radialgradient stop filter desc metadata "
    "rdf:rdf cc:work dc:type dc:date dc:format dc:creator dc:title cc:agent"
)
#: Tags that run code or embed other documents.
ACTIVE_TAGS: Final = frozenset(
    [
        "script",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "foreignobject",
        "meta",
        "link",
        "base",
    ]
)
_PLAIN_TAGS: Final = frozenset(_TAG_NAMES.split()) - ACTIVE_TAGS


def candidates(text: ByteText) -> set[str]:
    """The distinct runs of a text that may be base64 or hex of something (shorter than 1024)."""
    data = text.data
    starts, ends = text.base64_runs(_MIN_RUN, MAX_DECODED_RUN, min_digits_only=8)  # digits: hex only
    short = (ends - starts) <= 7
    if short.any():  # outputs repeat their words: compare the short ones in numpy first
        keys = prefix_keys(data, starts[short], (ends - starts)[short], fold=False)
        first = np.unique(keys, return_index=True)[1]
        starts = np.concatenate((starts[short][first], starts[~short]))
        ends = np.concatenate((ends[short][first], ends[~short]))
    return {data[s:e].decode("ascii") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)}


def candidate_positions(text: ByteText, runs: Iterable[str]) -> dict[str, list[int]]:
    """Where each of ``runs`` (from :func:`candidates`) stands in the text, as a whole run
    (character offsets; one pass over the text however many runs there are)."""
    return text.base64_run_positions(runs, _MIN_RUN, MAX_DECODED_RUN)


def _utf8(data: bytes) -> str:
    return data.decode("utf-8", "replace")


#: Bytes that are neither printable ISO 8859-1 nor a space, tab or line break: C0 and C1 controls.
_CONTROLS: Final = bytes([*range(0, 9), 11, 12, *range(14, 32), *range(0x7F, 0xA0)])
_HIGH: Final = bytes(range(0x80, 0x100))


def _texts(data: bytes) -> list[str]:
    """``data`` as text: UTF-8, and also ISO 8859-1 or UTF-16 where it looks like that instead.

    Undecodable bytes become U+FFFD, which the matcher ignores.  Bytes that are not
    UTF-8 are also read as ISO 8859-1 (DICOM's ``ISO_IR 100``) when they look like text
    in it: at least 8 bytes, no control characters, and at most a third of them above
    0x7F (junk decoded from an ordinary run rarely is).  At least 8 bytes of which half
    the odd (or even) ones are 0 are also read as UTF-16, little- (or big-) endian: text
    with some Latin letters.
    """
    utf8 = _utf8(data)
    out = [utf8]
    if len(data) < 8:
        return out
    if "\ufffd" in utf8:
        high = len(data) - len(data.translate(None, _HIGH))
        if 3 * high <= len(data) and len(data.translate(None, _CONTROLS)) == len(data):
            out.append(data.decode("latin-1"))
    pairs = len(data) // 2
    for zero, codec in ((1, "utf-16-le"), (0, "utf-16-be")):
        if 2 * data[zero::2].count(0) >= pairs and 2 * data[1 - zero :: 2].count(0) < pairs:
            start = 2 if data[:2] in (b"\xff\xfe", b"\xfe\xff") else 0  # a byte order mark
            out.append(data[start : start + (len(data) - start) // 2 * 2].decode(codec, "replace"))
    return out


def decode_candidate(run: str) -> list[tuple[str, str]]:
    """Every decoding of one run: ``[(encoding, decoded text), ...]``.

    Parameters
    ----------
    run : str
        A run from :func:`candidates`.

    Returns
    -------
    list of (str, str)
        ``("hex", text)`` for each hex sub-run at each nibble offset, ``("base64",
        text)`` at each character offset (more than one text where the bytes may be
        ISO 8859-1 or UTF-16: :func:`_texts`).  Undecodable bytes become U+FFFD, which
        the matcher ignores, so junk around a value does not hide it.
    """
    out: list[tuple[str, str]] = []
    for hex_run in _HEX_RUN.findall(run):
        for phase in (0, 1):
            chunk = hex_run[phase:]
            chunk = chunk[: len(chunk) // 2 * 2]
            if len(chunk) >= 8:
                out.extend(("hex", text) for text in _texts(bytes.fromhex(chunk)))
    if not run.isdigit():
        std = run.translate(_URL_SAFE)
        for phase in range(4):
            chunk = std[phase:]
            rest = len(chunk) % 4
            if rest == 1:
                chunk = chunk[:-1]
            elif rest:
                chunk += "=" * (4 - rest)
            if len(chunk) >= 6:
                try:
                    out.extend(("base64", text) for text in _texts(base64.b64decode(chunk)))
                except (binascii.Error, ValueError):  # pragma: no cover - alphabet checked above
                    continue
    return out


def _lines_with(text: str, marker: re.Pattern[str]) -> Iterator[tuple[int, int]]:
    """Spans of the lines of ``text`` that hold ``marker``, each once."""
    last_end = -1
    for m in marker.finditer(text):
        if m.start() < last_end:
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        last_end = end
        yield start, end


def _code_point(m: re.Match[str]) -> str:
    code = int(next(g for g in m.groups() if g), 16)
    return chr(code) if code <= 0x10FFFF else m.group()


def _unbackslash(line: str) -> list[str]:
    """The line with ``\\xNN``, ``\\uNNNN`` and ``\\UNNNNNNNN`` escapes read as code points,
    and with ``\\xNN`` read as bytes of UTF-8 (how Python prints ``bytes``); ``\\t``,
    ``\\n`` and ``\\r`` read as spaces."""
    line = _ESCAPED_SPACE.sub(" ", line)
    as_points = _ESCAPED_POINT.sub(_code_point, line)
    raw = line.encode("utf-8", "surrogatepass")
    as_bytes = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return [as_points, _utf8(as_bytes)]


def decode_lines(text: str) -> list[tuple[str, str, int, int]]:
    """URL-, backslash- and entity-decoded views of the lines that hold such escapes.

    Returns
    -------
    list of (str, str, int, int)
        ``(encoding, decoded line, start, end)`` with the line's span in ``text``.
    """
    out: list[tuple[str, str, int, int]] = []
    if "%" in text:
        for s, e in _lines_with(text, _URL_ESCAPE):
            out.append(("url", urllib.parse.unquote_plus(text[s:e]), s, e))
    if "\\" in text:
        for s, e in _lines_with(text, _BACKSLASH_ESCAPE):
            out.extend(("escape", d, s, e) for d in _unbackslash(text[s:e]))
    if "&" in text:
        for s, e in _lines_with(text, _ENTITY):
            out.append(("entity", html.unescape(text[s:e]), s, e))
    return out


def _tag_names(codes: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Spans of the tag names: runs of name characters right after ``<``, starting with a letter."""
    n = len(codes)
    mask = np.zeros(n + 2, dtype=bool)
    mask[1:-1] = _NAME_CHARS[codes]
    edges = np.flatnonzero(mask[1:] != mask[:-1])
    starts, ends = edges[0::2], edges[1::2]
    after_lt = starts >= 1
    after_lt[after_lt] = codes[starts[after_lt] - 1] == ord("<")
    first = codes[starts]
    second = codes[np.minimum(starts + 1, n - 1)]
    wanted = after_lt & (_LETTERS[first] | ((first == ord("/")) & _LETTERS[second]))
    return starts[wanted], ends[wanted]


class Markup(NamedTuple):
    """What :func:`markup_parts` finds in HTML or SVG."""

    text: str
    """:func:`markup_text` of it."""
    names: set[str]
    """Lowercased tag names outside the plain HTML and SVG tags (active ones included)."""
    size: int
    """Its size in bytes (UTF-8)."""


def markup_parts(markup: str) -> Markup:
    """:func:`markup_text`, the unusual tag names of the markup, and its size."""
    data = markup.encode("utf-8", "surrogatepass")
    codes = np.frombuffer(data, dtype=np.uint8)
    starts, ends = _tag_names(codes)
    inside = np.zeros(len(codes) + 1, dtype=np.int8)
    inside[starts] += 1
    inside[ends] -= 1
    view = codes.copy()
    view[np.cumsum(inside[:-1], dtype=np.int8).astype(bool) | (codes == ord(">")) | (codes == ord("<"))] = (
        ord("\n")
    )
    text = view.tobytes().decode("utf-8", "surrogatepass")
    lengths = ends - starts
    short = lengths <= 7
    keys = prefix_keys(data, starts[short], lengths[short])
    found = np.searchsorted(_PLAIN_KEYS, keys)
    plain = _PLAIN_KEYS[np.minimum(found, len(_PLAIN_KEYS) - 1)] == keys
    odd = np.flatnonzero(short)[~plain].tolist() + np.flatnonzero(~short).tolist()
    names = {data[starts[i] : ends[i]].decode("ascii").strip("/").lower() for i in odd}
    names -= _PLAIN_TAGS
    unknown = sorted(n for n in names if n not in ACTIVE_TAGS)
    if unknown:
        text += "\n" + "\n".join(unknown)
    return Markup(html.unescape(text) if "&" in text else text, names, len(data))


def markup_text(markup: str) -> str:
    """HTML or SVG without its markup: the text, attribute values and comments, decoded.

    Tag names, ``<`` and ``>`` become line breaks: cells of a table stay apart for the number
    rules, while a name split over two cells is still matched (separators are ignored).
    Everything else stays (attributes, comments, malformed tags), and tag names that are
    not standard HTML or SVG follow at the end, so nothing can hide in them.  Character
    references are decoded.
    """
    return markup_parts(markup)[0]


#: Keys (see ``_keys``) of the plain tag names of up to 7 characters, opening and closing.
_PLAIN_KEYS: Final = np.array(
    sorted({prefix_key((s + t).encode()) for t in _PLAIN_TAGS for s in ("", "/") if len(s + t) <= 7}),
    dtype=np.uint64,
)
