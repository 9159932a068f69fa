"""What an image output carries besides its pixels.

Pixels cannot be checked (a plot title with a patient's name is pixels): images go to
the release queue unless the site's policy lets them out.  What can be checked is the
text a PNG carries (``tEXt``, ``zTXt`` and ``iTXt`` chunks, scanned for identifiers)
and data hidden in its structure (after ``IEND``, or in chunks that are not part of
the PNG standard), which is removed.  Other raster formats are opaque.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

__all__ = ["PngContent", "read_png"]

_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_STANDARD: Final = frozenset(
    {
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT",
        b"sRGB", b"cICP", b"mDCv", b"cLLi", b"tEXt", b"zTXt", b"iTXt", b"bKGD", b"hIST",
        b"pHYs", b"sPLT", b"eXIf", b"tIME", b"acTL", b"fcTL", b"fdAT",
    }
)  # fmt: skip
_MAX_TEXT: Final = 1_000_000


@dataclass
class PngContent:
    """The text of a PNG and what is wrong with its structure.

    Attributes
    ----------
    texts : list of str
        Keywords and values of its text chunks (and printable runs of ``eXIf``).
    problems : list of str
        ``png_invalid`` (not a PNG, or truncated), ``png_trailing_data`` (bytes after
        ``IEND``), ``png_unknown_chunk`` (a chunk outside the standard).
    """

    texts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_TEXT)
    return out


def _text_chunk(kind: bytes, data: bytes) -> list[str]:
    if kind == b"tEXt":
        key, _, value = data.partition(b"\0")
        return [key.decode("latin-1"), value.decode("latin-1")]
    if kind == b"zTXt":
        key, _, rest = data.partition(b"\0")
        return [key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")]
    if kind == b"iTXt":
        key, _, rest = data.partition(b"\0")
        compressed = rest[:1] == b"\x01"
        lang, _, rest = rest[2:].partition(b"\0")
        translated, _, value = rest.partition(b"\0")
        text = _inflate(value) if compressed else value
        return [
            key.decode("latin-1"),
            lang.decode("latin-1"),
            translated.decode("utf-8", "replace"),
            text.decode("utf-8", "replace"),
        ]
    return [data.decode("latin-1")]  # eXIf: its strings are ASCII


def read_png(data: str | bytes) -> PngContent:
    """Read the text chunks and check the structure of a PNG.

    Parameters
    ----------
    data : str or bytes
        The PNG, or its base64 text as notebooks hold it.

    Returns
    -------
    PngContent
    """
    out = PngContent()
    if isinstance(data, str):
        try:
            data = base64.b64decode(data)
        except (binascii.Error, ValueError):
            out.problems.append("png_invalid")
            return out
    if not data.startswith(_SIGNATURE):
        out.problems.append("png_invalid")
        return out
    pos = len(_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            out.problems.append("png_invalid")
            return out
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length or pos + 12 + length > len(data):
            out.problems.append("png_invalid")
            return out
        pos += 12 + length
        if kind not in _STANDARD:
            out.problems.append("png_unknown_chunk")
        elif kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            try:
                out.texts.extend(_text_chunk(kind, body))
            except zlib.error:
                out.problems.append("png_invalid")
        if kind == b"IEND":
            break
    if pos < len(data):
        out.problems.append("png_trailing_data")
    return out
