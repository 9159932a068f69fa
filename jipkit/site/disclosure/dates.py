"""Dates written with month names (``2 Jan 1980``, ``January 2nd, 1980``, ``2. März 1980``).

Month names are found among the words of a text that stand next to a digit (a
vectorised pass over :class:`~jipkit.site.disclosure.tokens.ByteText`), then the day and
year around each are read with small regular expressions: day-month-year,
month-day-year and year-month-day orders, with or without ``.``, ``,``, ``/``, ``-`` or
spaces between them, ordinals (``2nd``), and English and German month names and
abbreviations.  Two-digit years are not read.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Final

import numpy as np

from jipkit.site.disclosure.tokens import LETTER, ByteText, prefix_key, prefix_keys

__all__ = ["MONTHS", "month_dates"]

#: Month names and abbreviations (lowercase ASCII) and their numbers.
MONTHS: Final[dict[str, int]] = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan", "januar", "jaenner"),
            ("february", "feb", "februar", "febr"),
            ("march", "mar", "maerz", "marz"),
            ("april", "apr"),
            ("may", "mai"),
            ("june", "jun", "juni"),
            ("july", "jul", "juli"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct", "oktober", "okt"),
            ("november", "nov"),
            ("december", "dec", "dezember", "dez"),
        ),
        start=1,
    )
    for name in names
}
#: Month names with a non-ASCII letter: "März", "Mär", "Jänner" (matched after ``M``/``J`` + ä).
_NON_ASCII_MONTHS: Final = (
    (re.compile(r"m[äÄ]r(?:z)?(?![a-z])", re.IGNORECASE), 3),
    (re.compile(r"j[äÄ]nner(?![a-z])", re.IGNORECASE), 1),
)
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[list(b"0123456789")] = True
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[65:91] += 32
_SEP = r"[\s,./+-]{0,3}"  # "+": a space in a URL
_DAY = r"([0-9]{1,2})(?:st|nd|rd|th)?"
_BEFORE_DAY: Final = re.compile(rf"(?<![0-9]){_DAY}\.?{_SEP}$")
_BEFORE_YEAR: Final = re.compile(rf"(?<![0-9])([0-9]{{4}}){_SEP}$")
_AFTER_YEAR: Final = re.compile(rf"\.?{_SEP}([0-9]{{4}})(?![0-9])")
_AFTER_DAY_YEAR: Final = re.compile(rf"\.?{_SEP}{_DAY}{_SEP}([0-9]{{4}})(?![0-9])")
_AFTER_DAY: Final = re.compile(rf"\.?{_SEP}([0-9]{{1,2}})(?![0-9])")


_MONTH_KEYS: Final = np.array(sorted({prefix_key(m.encode()) for m in MONTHS}), dtype=np.uint64)


def _month_words(tokens: ByteText, loose: bool) -> list[tuple[int, int]]:
    """Byte spans of the month names standing next to a digit.

    A month name is a whole run of ASCII letters; with ``loose`` (decoded text, where
    junk sticks to a value) it may also end or start a longer run.
    """
    starts, ends = tokens.runs(LETTER)
    lengths = ends - starts
    codes = tokens.codes
    n = len(codes)
    which = np.flatnonzero((lengths >= 3) & ((lengths <= 9) | loose))
    if not len(which):
        return []
    s, e = starts[which], ends[which]
    digit_before = np.zeros(len(which), dtype=bool)
    digit_after = np.zeros(len(which), dtype=bool)
    for gap in (1, 2, 3):  # "2 Jan", "2. Jan", "Jan. 2", "sept. 3"
        digit_before |= _DIGIT[codes[np.maximum(s - gap, 0)]] & (s - gap >= 0)
        digit_after |= _DIGIT[codes[np.minimum(e + gap - 1, n - 1)]] & (e + gap - 1 < n)
    near = digit_before | digit_after
    which, digit_before, digit_after = which[near], digit_before[near], digit_after[near]
    s, e = starts[which], ends[which]
    spans = [(s, e)]
    if loose:
        for k in range(3, 10):
            fits = (e - s) > k
            spans.append((np.where(fits & digit_after, e - k, s), e))  # "xyzJanuary 2"
            spans.append((s, np.where(fits & digit_before, s + k, e)))  # "2 Janxyz"
    out: list[tuple[int, int]] = []
    for a, b in spans:
        keys = prefix_keys(tokens.data, a, b - a)
        found = np.searchsorted(_MONTH_KEYS, keys)
        hit = _MONTH_KEYS[np.minimum(found, len(_MONTH_KEYS) - 1)] == keys
        out.extend(zip(a[hit].tolist(), b[hit].tolist(), strict=True))
    return sorted(set(out))


def _read(text: str, start: int, end: int, month: int) -> Iterator[tuple[int, int, str]]:
    """The dates written around the month name at ``text[start:end]``."""
    before = text[max(0, start - 16) : start]
    after = text[end : end + 20]

    def key(year: str, day: str) -> str | None:
        try:
            return dt.date(int(year), month, int(day)).strftime("%Y%m%d")
        except ValueError:
            return None

    day, year = _BEFORE_DAY.search(before), _AFTER_YEAR.match(after)
    if day and year and (k := key(year.group(1), day.group(1))):
        yield start - len(before) + day.start(), end + year.end(), k
    both = _AFTER_DAY_YEAR.match(after)
    if both and (k := key(both.group(2), both.group(1))):
        yield start, end + both.end(), k
    year, day = _BEFORE_YEAR.search(before), _AFTER_DAY.match(after)
    if year and day and (k := key(year.group(1), day.group(1))):
        yield start - len(before) + year.start(), end + day.end(), k


def month_dates(tokens: ByteText, *, loose: bool = False) -> list[tuple[int, int, str]]:
    """Every date written with a month name in a text.

    Parameters
    ----------
    tokens : ByteText
        The text.
    loose : bool
        Also read month names at the end or start of a longer word (for decoded text).

    Returns
    -------
    list of (int, int, str)
        Character span and the date as ``YYYYMMDD``.
    """
    text = tokens.text
    out: list[tuple[int, int, str]] = []
    for s, e in _month_words(tokens, loose):
        month = MONTHS[tokens.data[s:e].decode("ascii").lower()]
        out.extend(_read(text, tokens.char_offset(s), tokens.char_offset(e), month))
    codes = tokens.codes
    lead = np.flatnonzero(codes[1:-2] == 0xC3) + 1  # UTF-8 ä is C3 A4, Ä is C3 84
    if len(lead):
        lead = lead[((codes[lead + 1] == 0xA4) | (codes[lead + 1] == 0x84))]
        before = _LOWER[codes[lead - 1]]
        for p in (lead[(before == ord("m")) | (before == ord("j"))] - 1).tolist():
            start = tokens.char_offset(p)
            if start > 0 and text[start - 1].isalpha() and not loose:
                continue
            for pattern, month in _NON_ASCII_MONTHS:
                m = pattern.match(text, start)
                if m is not None:
                    out.extend(_read(text, m.start(), m.end(), month))
    return out
