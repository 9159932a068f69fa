"""``jip.record``: report a result from a notebook, typed, for the federation to collect."""

from __future__ import annotations

import math
from typing import Any, Literal

from jipkit.protocol.records import COUNT_OF, RECORD_MIME, validate_record

__all__ = ["record"]

Kind = Literal["count", "measure", "table", "text"]


def _table(value: Any) -> dict[str, Any]:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        frame = value.reset_index() if not isinstance(value.index, pd.RangeIndex) else value
        rows = [[_plain(v) for v in row] for row in frame.itertuples(index=False, name=None)]
        return {"columns": [str(c) for c in frame.columns], "rows": rows}
    if isinstance(value, dict) and set(value) == {"columns", "rows"}:
        return {
            "columns": [str(c) for c in value["columns"]],
            "rows": [[_plain(v) for v in r] for r in value["rows"]],
        }
    raise TypeError("A table record takes a pandas DataFrame or {'columns': [...], 'rows': [[...]]}.")


def _plain(v: Any) -> Any:
    """numpy and pandas scalars as plain JSON values; NaN as None."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def record(
    name: str,
    value: Any,
    *,
    kind: Kind = "measure",
    unit: str | None = None,
    n: int | None = None,
    sd: float | None = None,
    of: Literal["patients", "studies", "series", "instances"] | None = None,
    count_columns: list[str] | None = None,
) -> dict[str, Any]:
    """Record a typed result in the notebook's outputs.

    Only records (and output cells) leave a site, after the site's disclosure checks.

    Parameters
    ----------
    name : str
        A stable identifier (letters, digits, ``_.:-``), the same at every site.
    value
        A count (int), a measure (float), a table (DataFrame) or a text (str).
    kind : {"count", "measure", "table", "text"}
    unit : str, optional
        For measures, e.g. ``"ml"`` or ``"HU"``.
    n : int, optional
        How many observations a measure summarises (needed to pool across sites).
    sd : float, optional
        The standard deviation of those observations (for pooled variance).
    of : {"patients", "studies", "series", "instances"}
        What a count counts (required for counts); for tables, what ``count_columns`` count.
    count_columns : list of str, optional
        Table columns that hold counts.

    Returns
    -------
    dict
        The record as stored.

    Examples
    --------
    >>> import jipkit as jip
    >>> jip.record("ct_series", 42, kind="count", of="series")  # doctest: +SKIP
    >>> jip.record("lung_volume_mean", 4712.5, unit="ml", n=40, sd=812.0)  # doctest: +SKIP
    """
    rec: dict[str, Any] = {"schema": "jip.record/1", "name": name, "kind": kind}
    if kind == "count":
        if of is None:
            raise ValueError(f"A count needs of= one of {COUNT_OF}.")
        rec["value"] = int(value)
    elif kind == "measure":
        rec["value"] = _plain(float(value))
    elif kind == "table":
        rec["value"] = _table(value)
        if count_columns:
            rec["count_columns"] = list(count_columns)
    else:
        rec["value"] = str(value)
    for key, v in (("unit", unit), ("n", n), ("sd", sd), ("of", of)):
        if v is not None:
            rec[key] = _plain(v)
    validate_record(rec)
    try:
        from IPython.display import display

        display({RECORD_MIME: rec, "text/plain": _text(rec)}, raw=True)  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - outside IPython there is nowhere to record to
        pass
    return rec


def _text(rec: dict[str, Any]) -> str:
    if rec["kind"] == "table":
        return f"[jip record] {rec['name']}: table of {len(rec['value']['rows'])} rows"
    extra = " ".join(f"{k}={rec[k]}" for k in ("unit", "n", "sd", "of") if k in rec)
    return f"[jip record] {rec['name']} = {rec['value']} {extra}".rstrip()
