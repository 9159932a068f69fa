"""Runs of character classes in a text, found with numpy: the cheap first pass of every check.

A text is looked at as its UTF-8 bytes, each given a set of class bits; a run is a
maximal stretch of bytes sharing a class.  Found once per text and shared by the
identifier matcher and the blob rules, these runs replace a dozen regular-expression
passes (each about 100 MB/s in CPython) by a few vectorised ones (about 1 GB/s):

- digit runs (numbers; a run right after ``<digit>.`` is the decimals of a number);
- ID tokens: digits with ``.``, ``/`` or ``-`` inside (dates, UIDs, IDs written with
  separators), but not plain decimals such as ``-4712.5``;
- base64-alphabet runs (candidates for decoding, and blobs);
- stretches of numbers and separators (runs of numbers).

Only ASCII bytes have classes: multi-byte characters end every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BASE64",
    "DIGIT",
    "DOT",
    "HEX",
    "ID_SEP",
    "LETTER",
    "NUM_STRETCH",
    "NUM_TOKEN",
    "ByteText",
    "prefix_key",
    "prefix_keys",
]

DIGIT: Final = 1
ID_SEP: Final = 2  # . / -
BASE64: Final = 4  # A-Z a-z 0-9 + / _ -
HEX: Final = 8
NUM_TOKEN: Final = 16  # what a number (or hex byte) is written with
NUM_STRETCH: Final = 32  # NUM_TOKEN and what separates numbers in a list or array
DOT: Final = 64
LETTER: Final = 128  # A-Z a-z


def _classes() -> npt.NDArray[np.uint8]:
    table = np.zeros(256, dtype=np.uint8)
    for c in b"0123456789":
        table[c] |= DIGIT | BASE64 | HEX | NUM_TOKEN
    for c in b"abcdefABCDEF":
        table[c] |= HEX | NUM_TOKEN
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/_-":
        table[c] |= BASE64
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        table[c] |= LETTER
    for c in b"./-":
        table[c] |= ID_SEP
    for c in b".+-xX\\":
        table[c] |= NUM_TOKEN
    table[ord(".")] |= DOT
    for c in b" \t\r\n\f\v,;:|[](){}":
        table[c] |= NUM_STRETCH
    table[table & NUM_TOKEN != 0] |= NUM_STRETCH
    return table


_CLASSES: Final = _classes()
_EMPTY: Final = np.zeros(0, dtype=np.intp)
_SEPARATORS: Final = b"./-"


_CASE: Final = 0x2020202020202020  # OR-ed in: ASCII letters to lowercase (digits, ./-: unchanged)
_LOW_BYTES: Final = np.array([(1 << (8 * k)) - 1 for k in range(8)], dtype=np.uint64)


def prefix_keys(
    data: bytes, starts: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp], *, fold: bool = True
) -> npt.NDArray[np.uint64]:
    """A 64-bit key per span of ``data``: its first 7 bytes and its length.

    With ``fold``, ASCII letters are lowercased first (``.``, ``/``, ``-`` and digits do
    not change; ``_`` becomes DEL).  Two spans of at most 7 bytes have the same key
    exactly when they are equal (but for case, with ``fold``); longer spans share a key
    when their first 7 bytes and their lengths agree.
    """
    padded = data + bytes(8)
    words = np.ndarray(shape=(len(data),), dtype="<u8", buffer=padded, strides=(1,))[starts]
    if fold:
        words |= np.uint64(_CASE)
    return (words & _LOW_BYTES[np.minimum(lengths, 7)]) | (lengths.astype(np.uint64) << np.uint64(56))


def prefix_key(word: bytes) -> int:
    """:func:`prefix_keys` of one word."""
    return int(prefix_keys(word, np.array([0], dtype=np.intp), np.array([len(word)], dtype=np.intp))[0])


class ByteText:
    """A text as UTF-8 bytes with a class per byte, and the runs of each class.

    Parameters
    ----------
    text : str
    """

    def __init__(self, text: str):
        self.text = text
        self.data = text.encode("utf-8", "surrogatepass")
        self.codes = np.frombuffer(self.data, dtype=np.uint8)
        self.classes = _CLASSES[self.codes]
        self._runs: dict[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]] = {}

    def runs(self, bits: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Starts and ends (byte offsets) of the maximal runs of bytes having any of ``bits``."""
        known = self._runs.get(bits)
        if known is not None:
            return known
        if not len(self.data):
            return _EMPTY, _EMPTY
        mask = np.empty(len(self.data) + 2, dtype=bool)
        mask[0] = mask[-1] = False
        np.not_equal(self.classes & bits, 0, out=mask[1:-1])
        edges = np.flatnonzero(mask[1:] != mask[:-1])
        self._runs[bits] = edges[0::2], edges[1::2]
        return self._runs[bits]

    def char_offset(self, byte_offset: int) -> int:
        """The character offset in ``text`` of a byte offset at a character boundary."""
        if len(self.data) == len(self.text):
            return byte_offset
        return len(self.data[:byte_offset].decode("utf-8", "surrogatepass"))

    def char_offsets(self, byte_offsets: Sequence[int]) -> list[int]:
        """:meth:`char_offset` of many byte offsets, in one pass over the text."""
        if len(self.data) == len(self.text):
            return list(byte_offsets)
        out = [0] * len(byte_offsets)
        pos = chars = 0
        for i in sorted(range(len(byte_offsets)), key=byte_offsets.__getitem__):
            chars += len(self.data[pos : byte_offsets[i]].decode("utf-8", "surrogatepass"))
            pos = byte_offsets[i]
            out[i] = chars
        return out

    def _positions(self, spans: Iterable[tuple[bytes, int]]) -> dict[bytes, list[int]]:
        """``{token: [character offsets]}`` from ``(token, byte offset)`` pairs."""
        pairs = list(spans)
        chars = self.char_offsets([b for _, b in pairs])
        out: dict[bytes, list[int]] = {}
        for (token, _), at in zip(pairs, chars, strict=True):
            out.setdefault(token, []).append(at)
        return out

    # -- numbers ---------------------------------------------------------------------

    @cached_property
    def _digit_runs(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        starts, ends = self.runs(DIGIT)
        fraction = np.zeros(len(starts), dtype=bool)
        inner = starts >= 2
        s = starts[inner]
        fraction[inner] = (self.codes[s - 1] == ord(".")) & ((self.classes[s - 2] & DIGIT) != 0)
        return starts, ends, fraction

    def numbers(self) -> int:
        """How many numbers the text holds (digit runs; the decimals of a number are not one)."""
        return int(np.count_nonzero(~self._digit_runs[2]))

    def digit_runs(self, min_length: int) -> set[bytes]:
        """The distinct digit runs of at least ``min_length`` digits that are not decimals."""
        starts, ends, fraction = self._digit_runs
        keep = np.flatnonzero(((ends - starts) >= min_length) & ~fraction)
        data = self.data
        return {data[starts[i] : ends[i]] for i in keep.tolist()}

    def digit_run_positions(self, min_length: int, wanted: Iterable[bytes]) -> dict[bytes, list[int]]:
        """Where the digit runs of :meth:`digit_runs` that are in ``wanted`` are (character offsets)."""
        wanted = set(wanted)
        if not wanted:
            return {}
        starts, ends, fraction = self._digit_runs
        keep = np.flatnonzero(((ends - starts) >= min_length) & ~fraction)
        data = self.data
        spans = ((data[s:e], s) for s, e in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))
        return self._positions((run, s) for run, s in spans if run in wanted)

    def id_tokens(self, min_digits: int) -> set[bytes]:
        """Distinct tokens of digits with ``.``, ``/`` or ``-`` inside (edges stripped).

        Plain decimals (one ``.`` inside) are left out, and tokens with fewer than
        ``min_digits`` digits.
        """
        return {token for token, _ in self._id_tokens(self._id_points(), min_digits)}

    def _id_points(self) -> npt.NDArray[np.intp]:
        """Byte offsets of separators that make a token of digits an ID token (one or more per token)."""
        n = len(self.data)
        if n < 3:
            return _EMPTY
        digit = (self.classes & DIGIT) != 0
        # separators with a digit on both sides, by position (offset by one)
        inner = ((self.classes[1:-1] & ID_SEP) != 0) & digit[:-2] & digit[2:]
        dot = self.codes[1:-1] == ord(".")
        anchors = [np.flatnonzero(inner & ~dot) + 1]  # a dash or slash inside: a token
        dots = np.flatnonzero(inner & dot) + 1
        if len(dots) > 1:  # two dots inside one token (not a decimal): a token
            d_starts, d_ends, _ = self._digit_runs
            after = np.searchsorted(d_starts, dots[:-1] + 1)
            anchors.append(dots[:-1][d_ends[after] == dots[1:]])
        return np.concatenate(anchors)

    def _id_tokens(self, points: npt.NDArray[np.intp], min_digits: int) -> list[tuple[bytes, int]]:
        """The tokens holding ``points``, with their byte offsets."""
        if not len(points):
            return []
        starts, ends = self.runs(DIGIT | ID_SEP)
        which = np.unique(np.searchsorted(ends, points, side="right"))
        data = self.data
        out = []
        for i in which.tolist():
            raw = data[starts[i] : ends[i]]
            token = raw.strip(_SEPARATORS)
            if len(token) - token.count(b".") - token.count(b"/") - token.count(b"-") >= min_digits:
                out.append((token, int(starts[i]) + len(raw) - len(raw.lstrip(_SEPARATORS))))
        return out

    def id_token_positions(self, min_digits: int, wanted: Iterable[bytes]) -> dict[bytes, list[int]]:
        """Where the tokens of :meth:`id_tokens` that are in ``wanted`` are (character offsets)."""
        wanted = set(wanted)
        if not wanted:
            return {}
        points = self._id_points()
        return self._positions(t for t in self._id_tokens(points, min_digits) if t[0] in wanted)

    def base64_run_positions(
        self, wanted: Iterable[str], min_length: int, max_length: int
    ) -> dict[str, list[int]]:
        """Where the runs of :meth:`base64_runs` that are in ``wanted`` are (character offsets)."""
        wanted_bytes = {w.encode("ascii") for w in wanted}
        if not wanted_bytes:
            return {}
        starts, ends = self.base64_runs(min_length, max_length)
        data = self.data
        spans = ((data[s:e], s) for s, e in zip(starts.tolist(), ends.tolist(), strict=True))
        found = self._positions((run, s) for run, s in spans if run in wanted_bytes)
        return {run.decode("ascii"): at for run, at in found.items()}

    def number_stretches(self, min_length: int) -> list[tuple[int, int]]:
        """Byte spans of the runs of number characters and separators at least ``min_length`` long."""
        starts, ends = self.runs(NUM_STRETCH)
        keep = np.flatnonzero((ends - starts) >= min_length)
        return [(int(starts[i]), int(ends[i])) for i in keep.tolist()]

    # -- encodings and blobs ---------------------------------------------------------

    def base64_runs(
        self, min_length: int, max_length: int | None = None, *, min_digits_only: int = 0
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Byte spans of the base64-alphabet runs with ``min_length <= length (< max_length)``.

        Runs of digits only shorter than ``min_digits_only`` are left out.
        """
        starts, ends = self.runs(BASE64)
        lengths = ends - starts
        wanted = lengths >= min_length
        if max_length is not None:
            wanted &= lengths < max_length
        keep = np.flatnonzero(wanted)
        if min_digits_only and len(keep):
            d_starts, d_ends, _ = self._digit_runs
            at = np.minimum(np.searchsorted(d_starts, starts[keep]), max(len(d_starts) - 1, 0))
            digits_only = (
                (d_starts[at] == starts[keep]) & (d_ends[at] == ends[keep])
                if len(d_starts)
                else np.zeros(len(keep), dtype=bool)
            )
            keep = keep[~(digits_only & (lengths[keep] < min_digits_only))]
        return starts[keep], ends[keep]
