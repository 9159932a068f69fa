"""The compact form identifiers are matched in, and the way back to the original text.

:func:`compact` maps a text to the characters that carry identity: Unicode NFKD,
accents (combining marks) removed, case folded, letters that do not decompose folded
(``ø`` to ``o``, ``ł`` to ``l``, ...), and everything that is not a letter or a digit
removed (spaces, punctuation, separators).  ``"MÜLLER, Jürgen"`` and ``"jurgen.muller"``
both become ``"mullerjurgen"`` / ``"jurgenmuller"``.  :func:`letters` does the same and
drops digits too: names are matched in it (half the compact form of a table of numbers
is digits, and the matcher's speed goes with the length of what it reads).

Both are defined per character, so ``compact(a + b) == compact(a) + compact(b)``;
:class:`CompactMap` uses that to find where a match lies in the original text (built
only for texts that hold a candidate match).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Final

import numpy as np
import numpy.typing as npt

from jipkit.site.disclosure.tokens import DIGIT, LETTER, ByteText

__all__ = ["CompactMap", "compact", "is_boundary", "letters", "weight"]

_ASCII_DROP: Final = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_DROP_DIGITS: Final = _ASCII_DROP + b"0123456789"
_ASCII_LOWER: Final = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
_LETTER_LUT: Final = np.array([c < 128 and chr(c).isalpha() for c in range(256)], dtype=np.intp)
_ALNUM_LUT: Final = np.array([c < 128 and chr(c).isalnum() for c in range(256)], dtype=np.intp)
_UTF8_MASK: Final = np.array([0, 0, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF], dtype=np.uint32)
_NOT_ALNUM: Final = re.compile(r"[\W_]+")
_NOT_LETTER: Final = re.compile(r"[\W\d_]+")
#: Letters NFKD does not decompose, folded to their base letters (after case folding).
_FOLD: Final = str.maketrans(
    {"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i", "ħ": "h"}
    | {"ŧ": "t", "ŋ": "n", "ĸ": "k", "ſ": "s", "ƒ": "f"}
)
_FOLD_CHARS: Final = re.compile("[øæœłđðþıħŧŋĸſƒ]")
_NON_ASCII: Final = re.compile(r"[^\x00-\x7f]+")


def _compact(text: str, drop: bytes, junk: re.Pattern[str]) -> str:
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_LOWER, drop).decode("ascii")
    # ASCII first (bytes.translate is fast), then the Unicode steps on what is left: NFKD
    # can make ASCII characters (U+FF01 is "!", U+00B2 is "2"), so ASCII is dropped again.
    utf8 = text.encode("utf-8", "surrogatepass")
    rest = utf8.translate(_ASCII_LOWER, drop).decode("utf-8", "surrogatepass")
    if (len(utf8) - len(text)) * 40 < len(text):
        # A few non-ASCII characters in ASCII text: transform only them (per character).
        run = _compact_run if drop is _ASCII_DROP else _letters_run
        return _NON_ASCII.sub(run, rest)
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", rest).casefold())
    out = folded.encode("utf-8", "surrogatepass").translate(None, drop).decode("utf-8", "surrogatepass")
    if not out.isascii():
        out = junk.sub("", out)
        if _FOLD_CHARS.search(out):
            out = out.translate(_FOLD)
    return out


def compact(text: str) -> str:
    """The compact form of ``text``: what identifiers are matched in.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
        Case-folded letters and digits only, accents removed.

    Examples
    --------
    >>> compact("MÜLLER, Jürgen")
    'mullerjurgen'
    >>> compact("1.2.840-10008")
    '1284010008'
    """
    return _compact(text, _ASCII_DROP, _NOT_ALNUM)


def letters(text: str) -> str:
    """:func:`compact` without digits.

    Examples
    --------
    >>> letters("Jürgen 2. MÜLLER")
    'jurgenmuller'
    """
    return _compact(text, _ASCII_DROP_DIGITS, _NOT_LETTER)


@functools.lru_cache(maxsize=65536)
def _compact_cached(run: str) -> str:
    return compact(run)


@functools.lru_cache(maxsize=65536)
def _letters_cached(run: str) -> str:
    return letters(run)


def _compact_run(m: re.Match[str]) -> str:
    return _compact_cached(m.group())


def _letters_run(m: re.Match[str]) -> str:
    return _letters_cached(m.group())


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def weight(text: str) -> int:
    """How much a compact identifier counts towards the minimum length.

    Characters of East Asian scripts (wide or full-width) count twice: a three-character
    Chinese name is as specific as a six-letter Latin one.
    """
    if text.isascii():
        return len(text)
    return sum(2 if _wide(ch) else 1 for ch in text)


def _base_before(text: str, pos: int) -> str | None:
    """The character before ``pos``, skipping combining marks (None at the start)."""
    i = pos - 1
    while i >= 0 and unicodedata.combining(text[i]):
        i -= 1
    return text[i] if i >= 0 else None


@functools.lru_cache(maxsize=4096)
def _script(ch: str) -> str:
    """The script a letter belongs to, as the first word of its Unicode name (``LATIN``, ``HEBREW``)."""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def is_boundary(text: str, pos: int) -> bool:
    """Whether a token starts or ends at ``pos`` in ``text``.

    Tokens are runs of letters and digits; a token also ends where letters change to
    digits or back, between a lowercase and an uppercase letter (``camelCase``), where
    the script changes (``xכהן``: Latin, then Hebrew), and around every character of an
    East Asian script (they are written without spaces).
    """
    if pos <= 0 or pos >= len(text):
        return True
    before, after = _base_before(text, pos), text[pos]
    if before is None:
        return True
    if not before.isalnum() or not after.isalnum():
        return True
    if _wide(before) or _wide(after):
        return True
    if before.isdigit() != after.isdigit():
        return True
    if before.islower() and after.isupper():
        return True
    return not (before.isascii() and after.isascii()) and _script(before) != _script(after)


class CompactMap:
    """The :func:`letters` (or :func:`compact`) form of a text, and its positions mapped back.

    Parameters
    ----------
    text : str
        The original text.
    digits : bool
        Keep digits (:func:`compact`) rather than drop them (:func:`letters`).

    Attributes
    ----------
    compact : str
        ``letters(text)``, or ``compact(text)`` with ``digits``.
    """

    def __init__(self, text: str, *, digits: bool = False, tokens: ByteText | None = None):
        self.text = text
        self.digits = digits
        self.compact = compact(text) if digits else letters(text)
        self._tokens = tokens if tokens is not None and tokens.text is text else None
        self._owner: npt.NDArray[np.intp] | None = None

    def _owners_bytes(self, tokens: ByteText) -> npt.NDArray[np.intp]:
        """For each compact character, the offset of the UTF-8 bytes of ``text`` it came from."""
        codes = tokens.codes
        lengths = ((tokens.classes & (LETTER | DIGIT if self.digits else LETTER)) != 0).astype(np.intp)
        lead = np.flatnonzero(codes >= 0xC0)  # the first byte of each non-ASCII character
        if len(lead):
            size = 2 + (codes[lead] >= 0xE0).astype(np.intp) + (codes[lead] >= 0xF0)
            padded = tokens.data + bytes(4)
            words = np.ndarray(shape=(len(codes),), dtype="<u4", buffer=padded, strides=(1,))[lead]
            words &= _UTF8_MASK[size]
            _, first, inverse = np.unique(words, return_index=True, return_inverse=True)
            one = _compact_cached if self.digits else _letters_cached
            per_char = [
                len(one(tokens.data[p : p + n].decode("utf-8", "surrogatepass")))
                for p, n in zip(lead[first].tolist(), size[first].tolist(), strict=True)
            ]
            lengths[lead] = np.array(per_char, dtype=np.intp)[inverse]
        return np.repeat(np.arange(len(codes)), lengths)

    def _owners(self) -> npt.NDArray[np.intp]:
        """For each compact character, the index of the character of ``text`` it came from."""
        table = _ALNUM_LUT if self.digits else _LETTER_LUT
        one = _compact_cached if self.digits else _letters_cached
        if self.text.isascii():
            codes = np.frombuffer(self.text.encode("ascii"), dtype=np.uint8)
            return np.flatnonzero(table[codes])
        points = np.frombuffer(self.text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        lengths = table[np.minimum(points, 255)]  # 0 for every non-ASCII character ...
        wide = np.flatnonzero(points >= 128)
        distinct, inverse = np.unique(points[wide], return_inverse=True)  # ... which is set here
        per_char = [len(one(chr(c))) for c in distinct.tolist()]
        lengths[wide] = np.array(per_char, dtype=np.intp)[inverse]
        return np.repeat(np.arange(len(points)), lengths)

    def owner(self, k: int) -> int:
        """The index in ``text`` of the character that produced compact character ``k``."""
        if self._owner is None:
            self._owner = self._owners() if self._tokens is None else self._owners_bytes(self._tokens)
            if len(self._owner) != len(self.compact):  # pragma: no cover - defined per character
                raise AssertionError("the compact form is not defined per character for this text")
        owner = int(self._owner[k])
        return owner if self._tokens is None else self._tokens.char_offset(owner)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``text`` that produced ``compact[start:end]`` (``end > start``)."""
        first = self.owner(start)
        last = self.owner(end - 1)
        stop = last + 1
        while stop < len(self.text) and unicodedata.combining(self.text[stop]):
            stop += 1
        return first, stop
