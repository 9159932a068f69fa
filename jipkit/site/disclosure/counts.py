"""Small counts and the statistics built on them: k-suppression, secondary suppression, rounding.

Primary suppression (rule ``k_suppression``)
    A ``count`` record of patients, studies or series (``of``; counts of instances are
    not suppressed) from 1 to k-1 leaves as ``value: null, suppressed: true``; so does
    such a cell of a table's ``count_columns`` (the cell becomes null; a table whose
    ``of`` is missing is treated as counting patients).  0 is published unless the
    policy's ``suppress_zero_counts`` says otherwise.
Measures (rules ``measure_small_n``, ``measure_without_n``)
    A ``measure`` record with ``n`` below k, or without ``n`` (its n is unknown), leaves
    with ``value``, ``sd`` and ``n`` null and ``suppressed: true``.  In a table, the
    cells of measure columns (non-count columns holding floats) of a row with a
    suppressed count become null.
Secondary suppression (rule ``secondary_suppression``)
    So that a suppressed value cannot be recovered by subtraction:

    - in a table, the rows sharing values in *any* subset of the key columns (the
      non-count, non-measure columns; the empty subset is the whole table) form a group
      whose total may be known (it may be published as another record, or be a margin);
      a group holding exactly one suppressed cell of a count column gets a second one:
      its smallest published cell (a non-zero one first).  Repeated until no group has
      a single suppressed cell.  With more than 6 key columns only the whole table, the
      single columns and the all-but-one subsets are grouped.
    - among ``count`` records with the same ``of``, a record named ``X`` whose direct
      children (``X_a``, ``X.b``, ``X:c``, ``X-d``; not ``X_a_b`` when ``X_a`` exists)
      add up to it exactly is a total: the family gets a second suppressed member (the
      smallest published child, else the total) when it holds exactly one.

    Not covered: relations between a table and count records other than the group
    totals above (a count record suppressed in its family may still be recoverable from
    a table that breaks the same count down), totals that are not named as above,
    differences of overlapping groups (no linear-programming audit), and relations
    across results or sites.
Rounding (rules ``count_rounded``, ``float_rounded``)
    Published counts (records, count cells, the ``n`` of measures) are rounded to the
    policy's ``count_rounding`` base when it is set (never to 0); floats in records are
    rounded to ``float_digits`` significant digits.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from jipkit.site.disclosure.policy import OutputPolicy

__all__ = ["COUNT_RULES", "Change", "protect", "round_count", "round_significant"]

COUNT_RULES: Final = (
    "k_suppression",
    "secondary_suppression",
    "measure_small_n",
    "measure_without_n",
    "count_not_integer",
    "count_rounded",
    "float_rounded",
)

#: What a count must count for k to apply.
K_OF: Final = frozenset({"patients", "studies", "series"})
_SEPARATORS: Final = "_.:-"
_MAX_ALL_SUBSETS: Final = 6


@dataclass(frozen=True)
class Change:
    """Something :func:`protect` did to a record.

    Attributes
    ----------
    rule : str
        One of :data:`COUNT_RULES` (or ``record_invalid``: the record was removed).
    position : int
        The record's position in the list given to :func:`protect`.
    count : int
        How many values it concerns.
    """

    rule: str
    position: int
    count: int = 1


def round_significant(x: float, digits: int) -> float:
    """``x`` with ``digits`` significant digits (non-finite values unchanged).

    Examples
    --------
    >>> round_significant(4712.5731, 4)
    4713.0
    """
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def round_count(value: int, base: int | None) -> int:
    """``value`` rounded to the nearest multiple of ``base`` (halves up), never a positive to 0."""
    if not base or value == 0:
        return value
    rounded = (value + base // 2) // base * base
    return rounded if rounded > 0 else base


def _hidden(v: int, policy: OutputPolicy) -> bool:
    return 0 < v < policy.min_count or (v == 0 and policy.suppress_zero_counts)


def _key(v: Any) -> Hashable:
    return v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v, sort_keys=True)


def _pick(values: dict[int, int]) -> int:
    """The position of the smallest published value, a non-zero one first."""
    return min(values, key=lambda p: (values[p] == 0, values[p], p))


def _subsets(keys: Sequence[int]) -> list[tuple[int, ...]]:
    if len(keys) <= _MAX_ALL_SUBSETS:
        return [s for r in range(len(keys) + 1) for s in itertools.combinations(keys, r)]
    singles = [(k,) for k in keys]
    all_but_one = [tuple(k for k in keys if k != drop) for drop in keys]
    return [(), *singles, *all_but_one]


class _Table:
    """One table record being protected (a working copy of its rows)."""

    def __init__(self, rec: dict[str, Any], policy: OutputPolicy):
        self.rec, self.policy = rec, policy
        value = rec["value"]
        self.columns: list[str] = list(value["columns"])
        self.rows: list[list[Any]] = [list(r) for r in value["rows"]]
        wanted = set(rec.get("count_columns") or ())
        self.counts = [i for i, c in enumerate(self.columns) if c in wanted]
        self.k_applies = rec.get("of") in K_OF or rec.get("of") is None
        self.changes: dict[str, int] = defaultdict(int)

    @property
    def valid(self) -> bool:
        return all(len(r) == len(self.columns) for r in self.rows)

    def _coerce_counts(self) -> None:
        for row in self.rows:
            for i in self.counts:
                v = row[i]
                if isinstance(v, float) and v.is_integer():
                    row[i] = int(v)
                elif v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    row[i] = None
                    self.changes["count_not_integer"] += 1

    def _measures(self) -> list[int]:
        return [
            i
            for i in range(len(self.columns))
            if i not in self.counts and any(type(r[i]) is float for r in self.rows)
        ]

    def protect(self) -> dict[str, Any]:
        self._coerce_counts()
        measures = self._measures()
        keys = [i for i in range(len(self.columns)) if i not in self.counts and i not in measures]
        hidden: set[tuple[int, int]] = set()
        if self.k_applies:
            for r, row in enumerate(self.rows):
                for i in self.counts:
                    if row[i] is not None and _hidden(row[i], self.policy):
                        hidden.add((r, i))
            self.changes["k_suppression"] += len(hidden)
            for r in {r for r, _ in hidden}:
                for i in measures:
                    if self.rows[r][i] is not None:
                        self.rows[r][i] = None
                        self.changes["measure_small_n"] += 1
            if hidden:
                self._secondary(hidden, keys)
        for r, i in hidden:
            self.rows[r][i] = None
        self._round(measures)
        out = copy.deepcopy(self.rec)
        out["value"] = {"columns": self.columns, "rows": self.rows}
        return out

    def _secondary(self, hidden: set[tuple[int, int]], keys: Sequence[int]) -> None:
        subsets = _subsets(keys)
        changed = True
        while changed:
            changed = False
            for subset, i in itertools.product(subsets, self.counts):
                groups: dict[tuple[Hashable, ...], list[int]] = defaultdict(list)
                for r, row in enumerate(self.rows):
                    groups[tuple(_key(row[j]) for j in subset)].append(r)
                for members in groups.values():
                    if len(members) < 2 or sum((r, i) in hidden for r in members) != 1:
                        continue
                    shown = {
                        r: self.rows[r][i]
                        for r in members
                        if (r, i) not in hidden and self.rows[r][i] is not None
                    }
                    if shown:
                        hidden.add((_pick(shown), i))
                        self.changes["secondary_suppression"] += 1
                        changed = True

    def _round(self, measures: Sequence[int]) -> None:
        base, digits = self.policy.count_rounding, self.policy.float_digits
        for row in self.rows:
            for i, v in enumerate(row):
                if i in self.counts:
                    if v is not None and round_count(v, base) != v:
                        row[i] = round_count(v, base)
                        self.changes["count_rounded"] += 1
                elif type(v) is float and round_significant(v, digits) != v:
                    row[i] = round_significant(v, digits)
                    self.changes["float_rounded"] += 1


def _suppress(rec: dict[str, Any]) -> None:
    rec["value"] = None
    rec["suppressed"] = True
    for key in ("n", "sd"):
        if key in rec:
            rec[key] = None


def _direct_children(name: str, names: Sequence[str]) -> list[str]:
    below = [n for n in names if n != name and any(n.startswith(name + s) for s in _SEPARATORS)]
    return [
        n for n in below if not any(m != n and any(n.startswith(m + s) for s in _SEPARATORS) for m in below)
    ]


def _families(recs: list[dict[str, Any]], positions: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Count records that are the exact sum of their direct children: (total, children)."""
    by_of: dict[str, dict[str, int]] = defaultdict(dict)
    for p in positions:
        by_of[recs[p]["of"]][recs[p]["name"]] = p
    out = []
    for names in by_of.values():
        for name, p in names.items():
            children = [names[c] for c in _direct_children(name, list(names))]
            values = [recs[c]["value"] for c in children]
            if children and None not in values and sum(values) == recs[p]["value"]:
                out.append((p, children))
    return out


def protect(
    records: Sequence[dict[str, Any]], policy: OutputPolicy
) -> tuple[list[dict[str, Any] | None], list[Change]]:
    """Apply k-suppression, secondary suppression and rounding to a result's records.

    Parameters
    ----------
    records : sequence of dict
        Valid records (see :mod:`jipkit.protocol.records`); they are not modified.
    policy : OutputPolicy

    Returns
    -------
    records : list of dict or None
        The protected copies, position for position (None: removed, e.g. a table whose
        rows do not match its columns).
    changes : list of Change
        What was done, per record and rule.
    """
    work: list[dict[str, Any]] = [copy.deepcopy(dict(r)) for r in records]
    removed: set[int] = set()
    changes: list[Change] = []
    counts: list[int] = []
    hidden: set[int] = set()
    for p, rec in enumerate(work):
        kind = rec.get("kind")
        if kind == "count" and isinstance(rec.get("value"), int):
            if rec.get("of") in K_OF:
                counts.append(p)
                if _hidden(rec["value"], policy):
                    hidden.add(p)
        elif kind == "measure":
            n = rec.get("n")
            if n is None and policy.measures_need_n:
                _suppress(rec)
                changes.append(Change("measure_without_n", p))
            elif n is not None and n < policy.min_count:
                _suppress(rec)
                changes.append(Change("measure_small_n", p))
        elif kind == "table":
            table = _Table(rec, policy)
            if not table.valid:
                removed.add(p)
                changes.append(Change("record_invalid", p))
                continue
            work[p] = table.protect()
            changes.extend(Change(rule, p, n) for rule, n in table.changes.items() if n)
    changes.extend(Change("k_suppression", p) for p in sorted(hidden))
    families = _families(work, counts)
    changed = True
    while changed:
        changed = False
        for total, children in families:
            if sum(m in hidden for m in (total, *children)) != 1:
                continue
            shown = {c: work[c]["value"] for c in children if c not in hidden}
            pick = _pick(shown) if shown else total
            hidden.add(pick)
            changes.append(Change("secondary_suppression", pick))
            changed = True
    for p in hidden:
        _suppress(work[p])
    _round_records(work, removed, policy, changes)
    return [None if p in removed else rec for p, rec in enumerate(work)], changes


def _round_records(
    work: list[dict[str, Any]], removed: set[int], policy: OutputPolicy, changes: list[Change]
) -> None:
    for p, rec in enumerate(work):
        if p in removed or rec.get("suppressed"):
            continue
        if rec.get("kind") == "count" and isinstance(rec.get("value"), int):
            rounded = round_count(rec["value"], policy.count_rounding)
            if rounded != rec["value"]:
                rec["value"] = rounded
                changes.append(Change("count_rounded", p))
        elif rec.get("kind") == "measure":
            n_changed = 0
            for key in ("value", "sd"):
                v = rec.get(key)
                if isinstance(v, float) and round_significant(v, policy.float_digits) != v:
                    rec[key] = round_significant(v, policy.float_digits)
                    n_changed += 1
            if n_changed:
                changes.append(Change("float_rounded", p, n_changed))
            n = rec.get("n")
            if isinstance(n, int) and round_count(n, policy.count_rounding) != n:
                rec["n"] = round_count(n, policy.count_rounding)
                changes.append(Change("count_rounded", p))
