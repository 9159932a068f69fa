"""Raw data in text: blobs (base64, hex, compressed, escaped bytes) and long runs of numbers.

Rules, by name (each finding is removed whole):

``base64_blob``
    A run of at least ``min_chars`` characters of the base64 alphabets holding an
    uppercase letter, a lowercase letter and a digit (or ``+``/``/``), or followed by
    ``=`` padding; any such run of 1024 characters or more, whatever it holds.  Also a
    blob written in pieces (wrapped at 60 characters a line, cut into groups): the runs
    of 8 to ``min_chars`` characters holding an uppercase letter, a lowercase letter and
    a digit (or ``+``/``/``) are blobs when a text holds at least ``4 * min_chars``
    characters of distinct such pieces (or of hex pieces, below).
``compressed_blob``
    A ``base64_blob`` or ``hex_blob`` whose bytes start like zlib, gzip, zip, bzip2,
    xz, zstd, PNG, JPEG or NumPy's ``.npy`` data.
``hex_blob``
    A run of at least ``min_chars`` hex digits with a letter in it; in pieces, runs of
    8 to ``min_chars`` hex digits with a letter and a digit, counted as above.
``digit_blob``
    A run of at least ``min_chars`` digits (no number is that long).
``escaped_bytes``
    A line with 16 or more ``\\xNN`` escapes (a ``bytes`` value printed).
``number_run``
    More than ``max_numbers`` numbers in a row with only separators between them
    (spaces, line breaks, ``,;:|``, brackets): an array, a list, pixel values.  Hex
    bytes (``4d 75 6c``) and ``0x4d`` count as numbers.  Words, tags or other text
    between numbers end a run, so tables with labels are not runs.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from jipkit.site.disclosure.tokens import ByteText

__all__ = ["BLOB_RULES", "Blob", "count_numbers", "find_blobs"]

BLOB_RULES: Final = (
    "base64_blob",
    "compressed_blob",
    "hex_blob",
    "digit_blob",
    "escaped_bytes",
    "number_run",
)

_ALWAYS_BLOB: Final = 1024
_MAGIC: Final = (
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",
    b"\x1f\x8b",
    b"PK\x03\x04",
    b"BZh",
    b"\xfd7zXZ",
    b"\x28\xb5\x2f\xfd",
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"\x93NUMPY",
)
_ESCAPE: Final = re.compile(r"\\x[0-9A-Fa-f]{2}")
#: Pieces of a blob written in pieces are at least this long ...
_PIECE: Final = 8
#: ... and there are at least this many times ``min_chars`` characters of them in a text.
_PIECES_FACTOR: Final = 4
_ESCAPES_PER_LINE: Final = 16
_URL_SAFE: Final = str.maketrans("-_", "+/")
_DIGITS_ONLY: Final = bytes(c if 48 <= c <= 57 or c == 46 else 32 for c in range(256))


def _number_table() -> bytes:
    table = bytearray(b"x" * 256)
    for c in b"0123456789":
        table[c] = ord("d")
    for c in b"abcdefABCDEF":
        table[c] = ord("h")
    for c in b".+-xX\\":
        table[c] = ord("p")
    for c in b" \t\r\n\f\v,;:|[](){}":
        table[c] = ord("s")
    return bytes(table)


_NUMBER_VIEW: Final = _number_table()
_NUMBER_TOKEN: Final = re.compile(rb"[dhp]*d[dhp]*")


@dataclass(frozen=True)
class Blob:
    """Raw data found in a text: the rule that found it and its span."""

    rule: str
    start: int
    end: int


def _compressed(data: bytes) -> bool:
    return data.startswith(_MAGIC)


def _classify(run: str, padded: bool, min_chars: int) -> str | None:
    core = run.rstrip("=")
    if len(core) < min_chars:
        return None
    if core.isdigit():
        return "digit_blob"
    if re.fullmatch(r"[0-9A-Fa-f]+", core) and not core.isalpha():
        head = core[: len(core) // 2 * 2][:16]
        return "compressed_blob" if _compressed(bytes.fromhex(head)) else "hex_blob"
    has_upper = any(c.isupper() for c in core)
    has_lower = any(c.islower() for c in core)
    has_other = any(c.isdigit() or c in "+/" for c in core)
    if padded or len(core) >= _ALWAYS_BLOB or (has_upper and has_lower and has_other):
        head = core[:16].translate(str.maketrans("-_", "+/"))
        try:
            data = base64.b64decode(head[: len(head) // 4 * 4])
        except (binascii.Error, ValueError):  # pragma: no cover - alphabet checked by the pattern
            data = b""
        return "compressed_blob" if _compressed(data) else "base64_blob"
    return None


_HEX_PIECE = re.compile(rb"[0-9A-Fa-f]+")
_DIGIT = re.compile(rb"[0-9]")
_UPPER = re.compile(rb"[A-Z]")
_LOWER = re.compile(rb"[a-z]")
_DIGIT_OR_SLASH_PLUS = re.compile(rb"[0-9+/]")


def _piece_kind(piece: bytes) -> str | None:
    """``hex`` or ``base64`` when a short run (ASCII bytes) looks like a piece of such a blob.

    Examples
    --------
    >>> _piece_kind(b"3fa2c1"), _piece_kind(b"ab12Cd+/"), _piece_kind(b"ResNet"), _piece_kind(b"123")
    ('hex', 'base64', None, None)
    """
    if _HEX_PIECE.fullmatch(piece):
        return "hex" if _DIGIT.search(piece) and not piece.isdigit() else None
    if _UPPER.search(piece) and _LOWER.search(piece) and _DIGIT_OR_SLASH_PLUS.search(piece):
        return "base64"
    return None


def _pieces(tokens: ByteText, min_chars: int) -> list[Blob]:
    """A blob written in pieces: many short runs that each look like a piece of one."""
    data = tokens.data
    starts, ends = tokens.base64_runs(_PIECE, min_chars)
    pieces = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        kind = _piece_kind(data[s:e])
        if kind is not None:
            pieces.append((s, e, kind))
    # distinct pieces only: a word repeated down a table or a log ("ResNet50") is not data
    if sum(len(p) for p in {data[s:e] for s, e, _ in pieces}) < _PIECES_FACTOR * min_chars:
        return []
    out: list[Blob] = []
    for kind in ("base64", "hex"):
        mine = [(s, e) for s, e, k in pieces if k == kind]
        if not mine:
            continue
        head = b"".join(data[s:e] for s, e in mine)[:16].decode("ascii")
        try:
            raw = bytes.fromhex(head) if kind == "hex" else base64.b64decode(head.translate(_URL_SAFE)[:12])
        except (binascii.Error, ValueError):  # pragma: no cover - alphabet checked by the pattern
            raw = b""
        rule = "compressed_blob" if _compressed(raw) else f"{kind}_blob"
        offsets = tokens.char_offsets([b for span in mine for b in span])
        out.extend(Blob(rule, offsets[2 * i], offsets[2 * i + 1]) for i in range(len(mine)))
    return out


def count_numbers(text: str) -> int:
    """How many numbers ``text`` holds (runs of digits; a decimal point does not split one)."""
    return len(text.encode("utf-8", "surrogatepass").translate(_DIGITS_ONLY, b".").split())


def find_blobs(
    text: str,
    *,
    min_chars: int = 64,
    max_numbers: int = 100,
    numbers: bool = True,
    tokens: ByteText | None = None,
) -> list[Blob]:
    """Blobs and runs of numbers in ``text``.

    Parameters
    ----------
    text : str
    min_chars : int
        The shortest base64, hex or digit run that is a blob.
    max_numbers : int
        The most numbers allowed in a row.
    numbers : bool
        Look for runs of numbers (not in images: SVG paths are numbers).
    tokens : ByteText, optional
        ``ByteText(text)``, when the caller has it already.

    Returns
    -------
    list of Blob
        In order of their start.
    """
    found: list[Blob] = []
    tokens = tokens if tokens is not None and tokens.text is text else ByteText(text)
    data = tokens.data
    for s, e in zip(*(a.tolist() for a in tokens.base64_runs(min_chars)), strict=True):
        pad = e
        while pad < len(data) and data[pad] == 61:  # "="
            pad += 1
        rule = _classify(data[s:e].decode("ascii"), pad > e, min_chars)
        if rule is not None:
            found.append(Blob(rule, tokens.char_offset(s), tokens.char_offset(pad)))
    found.extend(_pieces(tokens, min_chars))
    if "\\x" in text:
        lines: dict[int, int] = {}
        for m in _ESCAPE.finditer(text):
            start = text.rfind("\n", 0, m.start()) + 1
            lines[start] = lines.get(start, 0) + 1
        for start, n in lines.items():
            if n >= _ESCAPES_PER_LINE:
                end = text.find("\n", start)
                found.append(Blob("escaped_bytes", start, len(text) if end < 0 else end))
    if numbers and tokens.numbers() > max_numbers:
        for s, e in tokens.number_stretches(2 * max_numbers + 1):
            parts = list(_NUMBER_TOKEN.finditer(data[s:e].translate(_NUMBER_VIEW)))
            if len(parts) > max_numbers:
                start, end = s + parts[0].start(), s + parts[-1].end()
                found.append(Blob("number_run", tokens.char_offset(start), tokens.char_offset(end)))
    return sorted(found, key=lambda b: b.start)
