"""What the dashboard's run and results tables show: job states, records, pooled figures, CSV.

A suppressed value shows as ``suppressed``: never 0, never blank.  A site without the
record (no result yet, or a result without it) shows as ``-``.  A name a site recorded
twice counts once, as its last record, as in the pooled figures
(:func:`jipkit.coordinator.aggregate.combine`): every table, plot and CSV here reads a
site's records through :func:`site_records`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from jipkit.coordinator.db import FINAL_JOB_STATES

__all__ = [
    "Cell",
    "combined_csv",
    "combined_rows",
    "job_status",
    "records_csv",
    "site_records",
    "site_rows",
    "suppressed_sites",
]


_LABELS: Final = {
    "queued": ("queued", "queued"),
    "leased": ("running", "running"),
    "held": ("held at site", "held"),
    "succeeded": ("done", "done"),
    "cancelled": ("cancelled", "cancelled"),
}


def job_status(job: Mapping[str, Any]) -> dict[str, Any]:
    """How a job's state shows: ``{site, state, label, kind, reason, attempt, final}``.

    ``kind`` is one of queued, running, held, refused, failed, done, cancelled (the
    CSS class); ``label`` is the text, with the reason code of a refusal or failure.
    """
    state = str(job.get("state"))
    reason = job.get("reason")
    if state in ("refused", "declined"):
        label, kind = f"refused: {reason or 'no reason given'}", "refused"
        if state == "declined":
            label = f"refused (declined by the site): {reason or 'no reason given'}"
    elif state == "failed":
        label, kind = f"failed: {reason or 'no reason given'}", "failed"
    else:
        label, kind = _LABELS.get(state, (state, "unknown"))
    return {
        "site": job.get("site"),
        "state": state,
        "label": label,
        "kind": kind,
        "reason": reason,
        "attempt": job.get("attempt"),
        "final": state in FINAL_JOB_STATES,
    }


class Cell:
    """One value of a results table: its text and what it is (value, suppressed, missing)."""

    __slots__ = ("kind", "text", "title")

    def __init__(self, text: str, kind: str = "value", title: str = "") -> None:
        self.text = text
        self.kind = kind
        self.title = title


def _value_text(rec: Mapping[str, Any]) -> str:
    value = rec.get("value")
    kind = rec.get("kind")
    if kind == "table" and isinstance(value, Mapping):
        return f"table of {len(value.get('rows') or [])} rows"
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    extra = []
    if rec.get("unit"):
        text += f" {rec['unit']}"
    if rec.get("n") is not None:
        extra.append(f"n {rec['n']}")
    if rec.get("sd") is not None:
        extra.append(f"sd {rec['sd']:.4g}")
    return text + (f" ({', '.join(extra)})" if extra else "")


def record_cell(rec: Mapping[str, Any] | None) -> Cell:
    """A site's record as a table cell."""
    if rec is None:
        return Cell("-", "missing", "not reported")
    if rec.get("suppressed"):
        return Cell("suppressed", "suppressed", "suppressed by the site's disclosure rules (not 0)")
    if rec.get("value") is None:
        return Cell("-", "missing", "no value")
    return Cell(_value_text(rec))


def site_records(site: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A site's records by name: the last record of each name (as ``combine`` keeps it).

    Names in the order they first appear; empty unless the site's job succeeded (others
    have no records that count).
    """
    if site.get("state") != "succeeded":
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for r in site.get("records") or []:
        out[str(r.get("name"))] = r
    return out


def record_names(sites: Sequence[Mapping[str, Any]]) -> list[str]:
    """Record names in the order they first appear in the sites' results."""
    return list(dict.fromkeys(str(r.get("name")) for s in sites for r in s.get("records") or []))


def site_rows(results: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The per-site table: record names, and per site its status and one cell per record.

    Only a succeeded job's records are shown (others have none).
    """
    names = record_names(results["sites"])
    rows = []
    for s in results["sites"]:
        recs = site_records(s)
        rows.append(
            {
                "site": s["site"],
                "status": job_status(s),
                "cells": [record_cell(recs.get(n)) for n in names],
            }
        )
    return names, rows


def _pooled_text(entry: Mapping[str, Any], suppressed: Sequence[str]) -> tuple[Cell, str]:
    pooled = entry.get("pooled") or {}
    unit = f" {entry['unit']}" if entry.get("unit") else ""
    if entry["kind"] not in ("count", "measure"):
        return Cell("-", "missing", "texts and tables are not pooled"), "not pooled"
    value = pooled.get("total") if entry["kind"] == "count" else pooled.get("mean")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        if suppressed and len(suppressed) == len(entry["missing_sites"]):
            return Cell("suppressed", "suppressed", "suppressed at every site that reported it (not 0)"), ""
        return Cell("-", "missing", "no site reported a value"), ""
    if entry["kind"] == "count":
        return Cell(f"{value}"), f"total of {entry['of'] or 'items'}"
    detail = [f"n {pooled.get('n')}"]
    if pooled.get("sd") is not None:
        detail.append(f"sd {pooled['sd']:.4g}")
    return Cell(f"{value:.6g}{unit}"), "weighted mean, " + ", ".join(detail)


def suppressed_sites(results: Mapping[str, Any], name: str) -> list[str]:
    """The sites whose record ``name`` was suppressed: its last record there, as the pooled figure counts it."""
    return [str(s["site"]) for s in results["sites"] if (site_records(s).get(name) or {}).get("suppressed")]


def combined_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The combined table: one row per record, its pooled figure, and the sites left out.

    ``suppressed`` lists the sites whose value was suppressed, ``missing`` the other
    sites without a value (no result, or no such record): neither counts as 0.
    """
    rows = []
    for entry in results["combined"]:
        hidden = suppressed_sites(results, entry["name"])
        cell, detail = _pooled_text(entry, hidden)
        rows.append(
            {
                "name": entry["name"],
                "kind": entry["kind"],
                "pooled": cell,
                "detail": detail,
                "sites": entry["sites"],
                "suppressed": hidden,
                "missing": [s for s in entry["missing_sites"] if s not in hidden],
            }
        )
    return rows


def _csv_value(value: Any) -> Any:
    """A value for a CSV cell: empty for None/NaN; text that a spreadsheet would run as a
    formula (``=``, ``+``, ``-``, ``@``) is prefixed with ``'``: site texts are untrusted."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def records_csv(results: Mapping[str, Any]) -> str:
    """Every site's records, one row per site and record (as ``jip results --long``), and its state.

    Columns: site, state, name, kind, value, unit, n, sd, of, suppressed.  A suppressed
    value has an empty ``value`` and ``suppressed`` true (it is not 0); tables are left
    out (their value is not one number or text).  A name recorded twice at a site has one
    row, its last record (see :func:`site_records`).  A site without records has one row
    with its state only.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["site", "state", "name", "kind", "value", "unit", "n", "sd", "of", "suppressed"])
    for s in results["sites"]:
        state = job_status(s)["label"]
        recs = [r for r in site_records(s).values() if r.get("kind") != "table"]
        if s["state"] != "succeeded" or not recs:
            writer.writerow([s["site"], state, "", "", "", "", "", "", "", ""])
            continue
        for r in recs:
            suppressed = bool(r.get("suppressed"))
            writer.writerow(
                [
                    s["site"],
                    state,
                    r.get("name"),
                    r.get("kind"),
                    "" if suppressed else _csv_value(r.get("value")),
                    _csv_value(r.get("unit")),
                    _csv_value(r.get("n")),
                    _csv_value(r.get("sd")),
                    _csv_value(r.get("of")),
                    "true" if suppressed else "false",
                ]
            )
    return out.getvalue()


def combined_csv(results: Mapping[str, Any]) -> str:
    """The pooled figures, one row per record: name, kind, unit, pooled, n, sd, sites, missing_sites."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "kind", "unit", "of", "pooled", "n", "sd", "sites", "missing_sites"])
    for entry in results["combined"]:
        pooled = entry.get("pooled") or {}
        value = pooled.get("total", pooled.get("mean"))
        writer.writerow(
            [
                entry["name"],
                entry["kind"],
                _csv_value(entry.get("unit")),
                _csv_value(entry.get("of")),
                _csv_value(value),
                _csv_value(pooled.get("n")),
                _csv_value(pooled.get("sd")),
                entry["sites"],
                " ".join(entry["missing_sites"]),
            ]
        )
    return out.getvalue()
