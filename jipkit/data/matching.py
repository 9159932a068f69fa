"""DICOM attribute matching (PS3.4 C.2.2.2) translated to SQL for the index.

The rules, per key value:

* ``None``, ``""`` or ``"*"``: universal matching, the key constrains nothing.
* ``'""'`` (two double quotes): matches entities whose value is empty (C.2.2.2.8).
* A list, tuple or set of values, or a UID string with ``\\`` separators: matches any
  of them (list of UID matching, extended here to any attribute).
* ``*`` and ``?`` in a string: wildcard matching (any run of characters, one character).
* Dates (``DA``: StudyDate, SeriesDate, PatientBirthDate) and times (``TM``): a single
  value, or a range ``lo-hi`` that is inclusive and may be open on either side
  (``"20200101-"``, ``"-20201231"``).  Dates are compared as written in the files: local
  dates, no time-zone conversion.  As a convenience, a bound may be a year (``"2020"``)
  or a year and month (``"202003"``): as a lower bound it means the first day, as an
  upper bound the last, so ``"2020"`` alone means the whole year.  A time upper bound
  covers the whole of its last written unit (``"-1430"`` includes ``14:30:59.999999``).
* Person names (``PN``): case-insensitive, per component (family, given, middle, prefix,
  suffix, separated by ``^``) and per ``=`` group (alphabetic, ideographic, phonetic).
  Components left out of the key match anything; a key with one group is tried against
  every group of the value.
* Numbers (SeriesNumber, NumberOfSeriesRelatedInstances, ...): equality, or a range
  ``"lo-hi"`` / ``(lo, hi)`` with either side open (an extension of the standard).
* Everything else: single value matching, exact and case-sensitive as the standard says;
  ``ignore_case=True`` makes text matching case-insensitive (an extension).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from jipkit.data.keywords import vr_of
from jipkit.data.schema import NUMERIC
from jipkit.errors import QueryError

__all__ = ["Condition", "condition", "pn_match"]

Condition = tuple[str, list[Any]]

_UID_VRS = {"UI"}
_DATE_RE = re.compile(r"^\d{4}(\d{2}(\d{2})?)?$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _is_universal(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in ("", "*"))


def _glob_escape(text: str) -> str:
    # SQLite GLOB: * and ? are wildcards; [ starts a class. Keep * and ?, escape [ and ].
    return re.sub(r"([\[\]])", r"[\1]", text)


def _date_bound(text: str, keyword: str, upper: bool) -> str:
    text = text.strip()
    if not _DATE_RE.match(text):
        raise QueryError(
            f"{keyword}: expected a date as YYYYMMDD (or YYYY, YYYYMM) in a range like "
            f"'20200101-20201231', found {text!r}."
        )
    if len(text) == 8:
        _check_date(text, keyword)
        return text
    if not upper:
        return text + ("0101" if len(text) == 4 else "01")
    if len(text) == 4:
        return text + "1231"
    year, month = int(text[:4]), int(text[4:6])
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    return (nxt - dt.timedelta(days=1)).strftime("%Y%m%d")


def _check_date(text: str, keyword: str) -> None:
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError as err:
        raise QueryError(f"{keyword}: {text!r} is not a calendar date (YYYYMMDD).") from err


def _time_bound(text: str, keyword: str, upper: bool) -> str:
    text = text.strip().replace(":", "")
    if not _TIME_RE.match(text):
        raise QueryError(
            f"{keyword}: expected a time as HHMMSS.FFFFFF (or HH, HHMM, HHMMSS) in a range "
            f"like '0800-1200', found {text!r}."
        )
    if upper:
        whole, _, frac = text.partition(".")
        whole += "595959"[len(whole) :]
        return f"{whole}.{frac.ljust(6, '9')}"
    return text


def _range(value: str, keyword: str, kind: str) -> Condition | None:
    """``lo-hi`` for dates and times; None when ``value`` is not a range."""
    if "-" not in value:
        return None
    lo, _, hi = value.partition("-")
    bound = _date_bound if kind == "DA" else _time_bound
    parts: list[str] = []
    params: list[Any] = []
    if lo.strip():
        parts.append("{col} >= ?")
        params.append(bound(lo, keyword, False))
    if hi.strip():
        parts.append("{col} <= ?")
        params.append(bound(hi, keyword, True))
    if not parts:
        raise QueryError(f"{keyword}: the range {value!r} has neither a start nor an end.")
    return " AND ".join(parts), params


def _number(text: Any, keyword: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError) as err:
        raise QueryError(
            f"{keyword}: expected a number or a range like '100-' or (10, 20), found {text!r}."
        ) from err


def _numeric(value: Any, keyword: str) -> Condition:
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, str) and "-" in value.strip()[1:]:
        s = value.strip()
        cut = s.index("-", 1)
        lo, hi = s[:cut] or None, s[cut + 1 :] or None
    else:
        return "{col} = ?", [_number(value, keyword)]
    parts, params = [], []
    if lo is not None and str(lo).strip() != "":
        parts.append("{col} >= ?")
        params.append(_number(lo, keyword))
    if hi is not None and str(hi).strip() != "":
        parts.append("{col} <= ?")
        params.append(_number(hi, keyword))
    if not parts:
        raise QueryError(f"{keyword}: the range {value!r} has neither a start nor an end.")
    return " AND ".join(parts), params


def _single(keyword: str, value: Any, ignore_case: bool) -> Condition:
    """One value (not a list)."""
    if isinstance(value, dt.datetime):
        value = value.strftime("%Y%m%d" if vr_of(keyword) == "DA" else "%H%M%S.%f")
    elif isinstance(value, dt.date):
        value = value.strftime("%Y%m%d")
    if keyword in NUMERIC:
        return _numeric(value, keyword)
    if isinstance(value, tuple) and len(value) == 2 and vr_of(keyword) in ("DA", "TM"):
        lo, hi = ("" if v is None else _single(keyword, v, False)[1][0] for v in value)
        value = f"{lo}-{hi}"
    if not isinstance(value, str):
        raise QueryError(f"{keyword}: expected a string (or a list of strings), found {value!r}.")
    if value == '""':
        return "({col} IS NULL OR {col} = '')", []
    vr = vr_of(keyword)
    if vr in ("DA", "TM"):
        rng = _range(value, keyword, vr)
        if rng is not None:
            return rng
        if vr == "DA" and len(value.strip()) < 8:  # a year or a month: the whole of it
            return _range(f"{value}-{value}", keyword, vr) or ("1", [])
        if vr == "DA":
            _check_date(value.strip(), keyword)
        elif "*" not in value and "?" not in value:
            _time_bound(value, keyword, False)
    if vr == "PN":
        return "jip_pn_match({col}, ?)", [value]
    wild = "*" in value or "?" in value
    if ignore_case:
        if wild:
            return "lower({col}) GLOB ?", [_glob_escape(value.lower())]
        return "lower({col}) = ?", [value.lower()]
    if wild:
        return "{col} GLOB ?", [_glob_escape(value)]
    return "{col} = ?", [value]


def condition(keyword: str, value: Any, column: str, *, ignore_case: bool = False) -> Condition | None:
    """The SQL condition for ``keyword`` matching ``value`` in ``column``.

    Returns None for universal matching (the key constrains nothing).
    """
    if _is_universal(value):
        return None
    if isinstance(value, str) and "\\" in value and vr_of(keyword) in _UID_VRS:
        value = [v for v in value.split("\\") if v]
    if isinstance(value, list | set | frozenset) or (
        isinstance(value, tuple) and not (len(value) == 2 and _rangey(keyword))
    ):
        values = list(value)
        if not values:
            raise QueryError(f"{keyword}: an empty list matches nothing; pass None to match all.")
        if all(isinstance(v, str) and "*" not in v and "?" not in v for v in values) and (
            vr_of(keyword) != "PN" and not ignore_case and keyword not in NUMERIC
        ):
            marks = ",".join("?" * len(values))
            return f"{column} IN ({marks})", values
        parts = [_single(keyword, v, ignore_case) for v in values]
        sql = "(" + " OR ".join(f"({p})" for p, _ in parts) + ")"
        return sql.replace("{col}", column), [x for _, ps in parts for x in ps]
    sql, params = _single(keyword, value, ignore_case)
    return sql.replace("{col}", column), params


def _rangey(keyword: str) -> bool:
    return keyword in NUMERIC or vr_of(keyword) in ("DA", "TM")


# --- person names -----------------------------------------------------------------


@lru_cache(maxsize=1024)
def _pn_pattern(pattern: str) -> tuple[tuple[re.Pattern[str] | None, ...], ...]:
    groups = []
    for group in pattern.split("="):
        comps: list[re.Pattern[str] | None] = []
        for comp in group.split("^"):
            if comp in ("", "*"):
                comps.append(None)
                continue
            rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in comp.casefold())
            comps.append(re.compile(rx, re.DOTALL))
        groups.append(tuple(comps))
    return tuple(groups)


def _pn_group_match(comps: Iterable[re.Pattern[str] | None], value_group: str) -> bool:
    parts = value_group.casefold().split("^")
    for i, rx in enumerate(comps):
        if rx is None:
            continue
        have = parts[i].strip() if i < len(parts) else ""
        if not rx.fullmatch(have):
            return False
    return True


def pn_match(value: str | None, pattern: str) -> bool:
    """Whether the person name ``value`` matches ``pattern`` (see the module docstring)."""
    if value is None:
        return False
    groups = _pn_pattern(pattern)
    vgroups = value.split("=")
    if len(groups) == 1:
        return any(_pn_group_match(groups[0], g) for g in vgroups if g)
    for i, comps in enumerate(groups):
        if all(c is None for c in comps):
            continue
        if i >= len(vgroups) or not _pn_group_match(comps, vgroups[i]):
            return False
    return True
