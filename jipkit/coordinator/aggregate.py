"""Combine the sites' records: a site x record frame, and pooled figures across sites.

A suppressed value (``suppressed: true``, ``value: null``) is *missing*, never 0: it
is NaN in the frames, it does not enter a sum or a mean, and every pooled figure says
how many sites (and which) were missing.

Pooled variance uses the exact decomposition of the pooled data's sum of squares into
within-site and between-site parts: with site means :math:`m_i`, standard deviations
:math:`s_i` (computed with ``ddof``) and sizes :math:`n_i`, :math:`N = \\sum n_i` and the
grand mean :math:`m = \\sum n_i m_i / N`,

.. math::

    SS = \\sum_i \\left[(n_i - d)\\, s_i^2 + n_i (m_i - m)^2\\right], \\qquad
    s^2 = SS / (N - d),

which equals the variance (with the same ``ddof`` :math:`d`) of all observations put
together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = [
    "PooledCount",
    "PooledMean",
    "PooledVariance",
    "combine",
    "pooled_count",
    "pooled_sd",
    "pooled_variance",
    "records_frame",
    "records_long",
    "weighted_mean",
]

Values = Mapping[str, float | int | None] | pd.Series
Records = Mapping[str, Sequence[Mapping[str, Any]] | None]

_LONG_COLUMNS = ["site", "name", "kind", "value", "unit", "n", "sd", "of", "suppressed"]


def _number(v: Any) -> float:
    """A record's value as a float; None, NaN and non-numbers as NaN."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _series(values: Values) -> pd.Series:
    s = values if isinstance(values, pd.Series) else pd.Series(dict(values), dtype=object)
    return s.map(_number).astype(float)


def records_long(records: Records) -> pd.DataFrame:
    """One row per site and record: site, name, kind, value, unit, n, sd, of, suppressed.

    Parameters
    ----------
    records : mapping
        ``{site: [record, ...]}``; a site with None (no result) contributes no rows.

    Returns
    -------
    pandas.DataFrame
        ``value`` holds the record's value as it came (None when suppressed).
    """
    rows = []
    for site, recs in records.items():
        for r in recs or ():
            suppressed = bool(r.get("suppressed", False))
            rows.append(
                {
                    "site": site,
                    "name": r.get("name"),
                    "kind": r.get("kind"),
                    "value": None if suppressed else r.get("value"),
                    "unit": r.get("unit"),
                    "n": r.get("n"),
                    "sd": r.get("sd"),
                    "of": r.get("of"),
                    "suppressed": suppressed,
                }
            )
    return pd.DataFrame(rows, columns=_LONG_COLUMNS)


def records_frame(records: Records) -> pd.DataFrame:
    """The sites' records as a frame: one row per site, one column per record name.

    Counts and measures are floats (NaN where suppressed or not reported); texts and
    tables keep their values (None where missing).  Every site in ``records`` has a row,
    also one that sent no result.

    Parameters
    ----------
    records : mapping
        ``{site: [record, ...] or None}``.

    Returns
    -------
    pandas.DataFrame
        Indexed by site (index name ``site``), columns in the order records first appear.
    """
    sites = list(records)
    names: dict[str, str] = {}
    for recs in records.values():
        for r in recs or ():
            names.setdefault(str(r.get("name")), str(r.get("kind")))
    columns: dict[str, pd.Series] = {}
    for name, kind in names.items():
        col: list[Any] = []
        for site in sites:
            # A name recorded twice at one site: the last one counts (as in combine()).
            rec = next((r for r in reversed(records[site] or ()) if r.get("name") == name), None)
            value = None if rec is None or rec.get("suppressed") else rec.get("value")
            col.append(_number(value) if kind in ("count", "measure") else value)
        numeric = kind in ("count", "measure")
        columns[name] = pd.Series(col, index=sites, dtype=float if numeric else object)
    frame = pd.DataFrame(columns, index=pd.Index(sites, name="site"))
    return frame


@dataclass(frozen=True)
class PooledCount:
    """A count summed over sites.

    Attributes
    ----------
    total : int or None
        The sum over sites that reported a value; None when none did.
    sites : int
        Sites that contributed.
    missing : int
        Sites whose value was suppressed or not reported (not counted as 0).
    missing_sites : tuple of str
    """

    total: int | None
    sites: int
    missing: int
    missing_sites: tuple[str, ...]


@dataclass(frozen=True)
class PooledMean:
    """A mean over sites, weighted by each site's ``n``.

    Attributes
    ----------
    mean : float
        NaN when no site contributed.
    n : int
        Total observations.
    sites, missing, missing_sites
        As in :class:`PooledCount`.
    """

    mean: float
    n: int
    sites: int
    missing: int
    missing_sites: tuple[str, ...]


@dataclass(frozen=True)
class PooledVariance:
    """Mean, variance and standard deviation of all sites' observations taken together.

    Attributes
    ----------
    mean : float
    variance : float
    sd : float
    n : int
    sites, missing, missing_sites
        As in :class:`PooledCount`.
    """

    mean: float
    variance: float
    sd: float
    n: int
    sites: int
    missing: int
    missing_sites: tuple[str, ...]


def pooled_count(values: Values) -> PooledCount:
    """Sum per-site counts; suppressed (None/NaN) values are missing, not 0.

    Parameters
    ----------
    values : mapping or pandas.Series
        ``{site: count or None}``, e.g. a column of :func:`records_frame`.

    Returns
    -------
    PooledCount

    Examples
    --------
    >>> pooled_count({"a": 12, "b": None, "c": 30})
    PooledCount(total=42, sites=2, missing=1, missing_sites=('b',))
    """
    s = _series(values)
    ok = s.dropna()
    missing = tuple(str(i) for i in s.index[s.isna()])
    total = round(float(ok.sum())) if len(ok) else None
    return PooledCount(total, len(ok), len(missing), missing)


def _aligned(**columns: Values) -> tuple[pd.DataFrame, tuple[str, ...]]:
    frame = pd.DataFrame({k: _series(v) for k, v in columns.items()})
    bad = frame.isna().any(axis=1) | (frame["n"] <= 0)
    return frame[~bad], tuple(str(i) for i in frame.index[bad])


def weighted_mean(means: Values, ns: Values) -> PooledMean:
    """The mean of all observations from per-site means and sizes.

    Parameters
    ----------
    means, ns : mapping or pandas.Series
        Per-site mean and number of observations, keyed by site.  A site whose mean or
        ``n`` is missing (or ``n`` is 0) is left out and counted as missing.

    Returns
    -------
    PooledMean
        :math:`\\sum n_i m_i / \\sum n_i`.
    """
    frame, missing = _aligned(mean=means, n=ns)
    n = float(frame["n"].sum())
    mean = float((frame["mean"] * frame["n"]).sum() / n) if n > 0 else math.nan
    return PooledMean(mean, int(n), len(frame), len(missing), missing)


def pooled_variance(means: Values, sds: Values, ns: Values, *, ddof: int = 1) -> PooledVariance:
    """Variance of all observations from per-site means, standard deviations and sizes.

    Parameters
    ----------
    means, sds, ns : mapping or pandas.Series
        Per-site mean, standard deviation and number of observations, keyed by site.
        A site missing any of them is left out and counted as missing.
    ddof : int
        The delta degrees of freedom of the sites' ``sd`` and of the result (1: sample
        standard deviation, as numpy's ``std(ddof=1)`` and pandas' ``std()``).

    Returns
    -------
    PooledVariance
        Includes the between-site spread of the means (see the module's formula);
        NaN when fewer than ``ddof + 1`` observations contributed.
    """
    frame, missing = _aligned(mean=means, sd=sds, n=ns)
    n = float(frame["n"].sum())
    if n <= ddof:
        return PooledVariance(math.nan, math.nan, math.nan, int(n), len(frame), len(missing), missing)
    m, s, k = frame["mean"], frame["sd"], frame["n"]
    grand = float((m * k).sum() / n)
    ss = float(((k - ddof) * s**2 + k * (m - grand) ** 2).sum())
    var = ss / (n - ddof)
    return PooledVariance(grand, var, math.sqrt(var), int(n), len(frame), len(missing), missing)


def pooled_sd(means: Values, sds: Values, ns: Values, *, ddof: int = 1) -> float:
    """The pooled standard deviation: ``pooled_variance(...).sd``."""
    return pooled_variance(means, sds, ns, ddof=ddof).sd


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _text_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def combine(records: Records) -> list[dict[str, Any]]:
    """Pooled figures per record name, as JSON-able dicts (what the results API returns).

    Parameters
    ----------
    records : mapping
        ``{site: [record, ...] or None}`` for every target site of a run (None: no
        usable result, counted as missing).

    Returns
    -------
    list of dict
        ``{name, kind, unit, of, sites, missing, missing_sites, pooled}``; ``pooled`` is
        ``{total}`` for counts, ``{mean, n[, sd, variance]}`` for measures that carry
        ``n`` (and ``sd``), and None for texts and tables.
    """
    long = records_long(records)
    out: list[dict[str, Any]] = []
    all_sites = list(records)
    for name in dict.fromkeys(long["name"]):
        rows = long[long["name"] == name].set_index("site")
        rows = rows[~rows.index.duplicated(keep="last")]
        kind = str(rows["kind"].iloc[0])
        first = rows.iloc[0]
        values = {s: (rows.at[s, "value"] if s in rows.index else None) for s in all_sites}
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "unit": _text_or_none(first["unit"]),
            "of": _text_or_none(first["of"]),
            "pooled": None,
        }
        if kind == "count":
            pc = pooled_count(values)
            entry["pooled"] = {"total": pc.total}
            missing = pc.missing_sites
        elif kind == "measure":
            ns = {s: (rows.at[s, "n"] if s in rows.index else None) for s in all_sites}
            sds = {s: (rows.at[s, "sd"] if s in rows.index else None) for s in all_sites}
            wm = weighted_mean(values, ns)
            entry["pooled"] = {"mean": _finite(wm.mean), "n": wm.n}
            missing = wm.missing_sites
            pv = pooled_variance(values, sds, ns)
            if pv.sites == wm.sites and pv.sites:
                entry["pooled"].update(sd=_finite(pv.sd), variance=_finite(pv.variance))
        else:
            missing = tuple(s for s in all_sites if values[s] is None)
        entry.update(sites=len(all_sites) - len(missing), missing=len(missing), missing_sites=list(missing))
        out.append(entry)
    return out
