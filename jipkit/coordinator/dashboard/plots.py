"""Plots of a run's combined records, drawn on the server (matplotlib, SVG).

One plot per count or measure: a bar per site, the pooled figure in the title (and, for
a measure, as a dashed line with each site's standard deviation as an error bar).  A
suppressed site has no bar but the word *suppressed* where its bar would be (it is not
0); a site without the record says *not reported*.  Text is drawn as paths, so no text
from a site is left in the SVG as markup.

Plots are drawn in worker threads (the dashboard's handlers keep this CPU work off the
event loop), so nothing here touches pyplot or its backend: each plot is a
:class:`matplotlib.figure.Figure` of its own on an Agg canvas of its own, saved as SVG.  The SVG settings
(``svg.fonttype``, ``svg.hashsalt``) can only be given through matplotlib's global
``rcParams``, which :func:`matplotlib.rc_context` sets and restores; drawing holds
:data:`_DRAW_LOCK` so two threads never interleave those changes.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Mapping
from typing import Any

from jipkit.coordinator.dashboard.tables import site_records

__all__ = ["plot_names", "record_plot_svg"]

_DRAW_LOCK = threading.Lock()
"""Held while a plot is drawn: matplotlib's rcParams are global, and not thread-safe."""


def plot_names(results: Mapping[str, Any]) -> list[str]:
    """The records that have a plot: counts and measures."""
    return [str(e["name"]) for e in results["combined"] if e["kind"] in ("count", "measure")]


def _plain(text: object) -> str:
    """Text for matplotlib: ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _site_values(results: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any] | None]]:
    out = []
    for s in results["sites"]:
        rec = site_records(s).get(name)
        out.append((str(s["site"]), dict(rec) if rec is not None else None))
    return out


def record_plot_svg(results: Mapping[str, Any], name: str) -> bytes:
    """The plot of record ``name`` of a run's results, as SVG.

    Raises
    ------
    KeyError
        No count or measure of that name among the combined records.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entry = next(
        (e for e in results["combined"] if e["name"] == name and e["kind"] in ("count", "measure")), None
    )
    if entry is None:
        raise KeyError(name)
    per_site = _site_values(results, name)
    labels = [_plain(site) for site, _ in per_site]
    values: list[float] = []
    errors: list[float] = []
    notes: list[str | None] = []
    for _, rec in per_site:
        value = _finite(None if rec is None or rec.get("suppressed") else rec.get("value"))
        values.append(0.0 if value is None else value)
        errors.append((_finite(rec.get("sd")) or 0.0) if value is not None and rec else 0.0)
        if value is not None:
            notes.append(None)
        else:
            notes.append("suppressed" if rec and rec.get("suppressed") else "not reported")
    pooled = entry.get("pooled") or {}
    unit = f" {entry['unit']}" if entry.get("unit") else ""
    if entry["kind"] == "count":
        total = pooled.get("total")
        title = f"{name}: total {total if total is not None else '-'}"
    else:
        mean = pooled.get("mean")
        title = f"{name}: pooled mean {mean:.4g}{unit}" if mean is not None else f"{name}: no pooled mean"
    hidden = [site for (site, _), note in zip(per_site, notes, strict=True) if note == "suppressed"]
    absent = [site for (site, _), note in zip(per_site, notes, strict=True) if note == "not reported"]
    if hidden or absent:
        parts = [f"suppressed at {', '.join(hidden)}"] if hidden else []
        parts += [f"no value from {', '.join(absent)}"] if absent else []
        title += f"\n({'; '.join(parts)})"
    with _DRAW_LOCK, matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "jip-dashboard"}):
        fig = Figure(figsize=(6.0, 3.2), dpi=96, layout="constrained")
        FigureCanvasAgg(fig)  # its own Agg canvas (layout); savefig draws the SVG: no pyplot, no backend
        ax = fig.add_subplot()
        xs = list(range(len(labels)))
        shown = [v if n is None else 0.0 for v, n in zip(values, notes, strict=True)]
        ax.bar(
            xs,
            shown,
            yerr=[e if n is None else 0.0 for e, n in zip(errors, notes, strict=True)],
            color="#4d7cb3",
            capsize=4,
        )
        top = max([*shown, 1.0])
        for x, note in zip(xs, notes, strict=True):
            if note is not None:
                ax.text(
                    x, top * 0.05, note, rotation=90, ha="center", va="bottom", color="#8a4b00", fontsize=9
                )
        if entry["kind"] == "measure" and pooled.get("mean") is not None:
            ax.axhline(
                float(pooled["mean"]), color="#d08a2c", linestyle="--", linewidth=1.2, label="pooled mean"
            )
            ax.legend(loc="upper right", fontsize=8, frameon=False)
        ax.set_xticks(
            xs, labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center"
        )
        ax.set_ylabel(_plain(f"{entry['of'] or 'count'}" if entry["kind"] == "count" else f"value{unit}"))
        ax.set_title(_plain(title), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()
