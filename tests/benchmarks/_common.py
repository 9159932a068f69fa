"""Shared pieces of the benchmarks: sizes, interleaved timing, result tables, cache drops."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "COLUMNS",
    "Context",
    "Method",
    "Row",
    "Sizes",
    "Table",
    "Target",
    "drop_caches",
    "interleave",
    "median",
    "speedup",
]

#: The column headers every table prints (the smoke test looks for them).
COLUMNS = ("name", "figure", "unit", "ratio", "vs", "target", "met")


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark's data is and how often it is measured."""

    load_shape: tuple[int, int, int] = (300, 512, 512)
    load_rounds: int = 5
    cold_rounds: int = 3
    ingest_files: int = 9000
    ingest_rounds: int = 3
    query_instances: int = 1_000_000
    query_runs: int = 40
    pacs_instances: int = 20_000
    pacs_runs: int = 25
    retrieve_shape: tuple[int, int, int] = (300, 512, 512)
    retrieve_rounds: int = 4
    runner_rounds: int = 9
    latency_runs: int = 5
    scale_sites: int = 1000
    scale_runs: int = 5
    federation_warmup: bool = True
    lungs_shapes: tuple[tuple[int, int, int], ...] = ((48, 96, 96), (300, 512, 512))
    lungs_rounds: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes for a smoke test: every code path, a few seconds each."""
        return cls(
            load_shape=(12, 64, 64),
            load_rounds=2,
            cold_rounds=1,
            ingest_files=240,
            ingest_rounds=2,
            query_instances=20_000,
            query_runs=5,
            pacs_instances=300,
            pacs_runs=3,
            retrieve_shape=(10, 64, 64),
            retrieve_rounds=2,
            runner_rounds=1,
            latency_runs=1,
            scale_sites=20,
            scale_runs=1,
            federation_warmup=False,
            lungs_shapes=((12, 48, 48),),
            lungs_rounds=2,
        )


@dataclass
class Context:
    """What every benchmark gets: a scratch folder, the sizes, and where to report."""

    tmp: Path
    sizes: Sizes
    profile: bool = False
    cold: bool = True

    def say(self, message: str) -> None:
        """Progress, on stderr (the tables go to stdout)."""
        print(f"  .. {message}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        """A fresh folder under the scratch folder."""
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def run_profile(self, label: str, fn: Callable[[], object], lines: int = 18) -> None:
        """With ``--profile``: run ``fn`` under cProfile and print its hot spots (stderr)."""
        if not self.profile:
            return
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(lines)
        print(f"\n--- profile: {label} (sorted by own time) ---\n{out.getvalue()}", file=sys.stderr)


# --- timing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One contender: ``run`` is timed; ``prepare`` runs just before it, untimed."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], object] | None = None


def interleave(
    methods: Sequence[Method],
    rounds: int,
    *,
    warmup: bool = False,
    on_round: Callable[[int], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per round of each method, run in turn (order rotated every round).

    Interleaving spreads the machine's slow spells over every method; comparing them
    round by round (:func:`speedup`) cancels drifts that last longer than a round.
    ``warmup`` runs each method once, untimed, first; ``on_round(r)`` is called before
    round ``r``.
    """
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    if warmup:
        for m in methods:
            if m.prepare is not None:
                m.prepare()
            m.run()
    for r in range(rounds):
        if on_round is not None:
            on_round(r)
        shift = r % len(methods)
        for m in [*methods[shift:], *methods[:shift]]:
            if m.prepare is not None:
                m.prepare()
            start = time.perf_counter()
            m.run()
            times[m.name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """The median (of a non-empty sequence)."""
    return float(statistics.median(values))


def speedup(seconds: Sequence[float], baseline_seconds: Sequence[float]) -> float:
    """How many times faster than the baseline: the median of the per-round ratios."""
    return median([b / s for s, b in zip(seconds, baseline_seconds, strict=True)])


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal: ``ratio >= 0.5`` or ``figure < 10`` (on the row's ratio or its figure)."""

    op: Literal[">=", "<"]
    threshold: float
    on: Literal["ratio", "figure"] = "ratio"

    def met(self, figure: float, ratio: float | None) -> bool | None:
        """Whether the row reaches the goal (None when the ratio is missing)."""
        value = ratio if self.on == "ratio" else figure
        if value is None:
            return None
        return value >= self.threshold if self.op == ">=" else value < self.threshold

    def __str__(self) -> str:
        suffix = "x" if self.on == "ratio" else ""
        return f"{self.op} {self.threshold:g}{suffix}"


@dataclass(frozen=True)
class Row:
    """One line of a table.  ``ratio`` is this row's speed over the ``vs`` row's (>1: faster)."""

    name: str
    figure: float
    unit: str
    ratio: float | None = None
    vs: str = ""
    target: Target | None = None


@dataclass
class Table:
    """A benchmark's result: a title, rows, and notes that say what was measured."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def add(self, row: Row) -> None:
        """Append a row."""
        self.rows.append(row)

    def render(self) -> str:
        """The table as text."""
        out = [f"== {self.title} =="]
        if self.skipped is not None:
            out.append(f"skipped: {self.skipped}")
            return "\n".join(out)
        cells = [list(COLUMNS)] + [_cells(r) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
        for k, line in enumerate(cells):
            text = "  ".join(
                c.ljust(w) if i in (0, 2, 4) else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
            out.append(text.rstrip())
            if k == 0:
                out.append("-" * len(text.rstrip()))
        out.extend(f"  * {n}" for n in self.notes)
        return "\n".join(out)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cells(row: Row) -> list[str]:
    met = row.target.met(row.figure, row.ratio) if row.target is not None else None
    return [
        row.name,
        _fmt(row.figure),
        row.unit,
        "" if row.ratio is None else f"{_fmt(row.ratio)}x",
        row.vs,
        "" if row.target is None else str(row.target),
        "" if met is None else ("yes" if met else "NO"),
    ]


# --- the page cache --------------------------------------------------------------------

_DROP = Path("/proc/sys/vm/drop_caches")


def drop_caches() -> bool:
    """Empty the kernel's page cache (needs root); False where that is not allowed."""
    os.sync()
    try:
        with _DROP.open("w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True
