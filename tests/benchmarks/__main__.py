"""Run the data-layer and federation benchmarks: ``python -m tests.benchmarks [--only NAME] [--quick]``.

Tables go to stdout, progress to stderr.  The exit status is 0 unless a benchmark
failed with an error; missed targets are reported, never raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import Context, Sizes, Table

#: Benchmark name -> (module, what it measures).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "load": ("local_load", "a 512x512x300 CT from local files: jipkit vs cat, pydicom, SimpleITK"),
    "ingest": ("ingest", "header reading and indexing rate: jipkit vs pydicom, gdcm.Scanner"),
    "query": ("query", "cohort queries on a 1,000,000-instance index: jipkit vs raw SQLite"),
    "pacs-query": ("pacs_query", "cohort queries on 20,000 instances: jipkit index vs Orthanc /tools/find"),
    "retrieve": ("retrieve", "a 300-slice CT from Orthanc: jipkit vs plain WADO-RS, dicomweb-client"),
    "runner": ("fed_runner", "site runner per-job overhead, real coordinator over HTTP: vs papermill"),
    "latency": ("fed_latency", "submit -> 2 approvals -> run -> results of a trivial notebook at 3 sites"),
    "coordinator-scale": ("fed_scale", "1,000 simulated runners against one coordinator: one run"),
    "disclosure": (
        "disclosure",
        "checking 40 MB of outputs against 1,000,000 identifying values: vs a substring loop",
    ),
    "lungs": ("lungs", "lung segmentation of one CT, 96x96x48 and 512x512x300: torch CUDA vs CPU"),
}


def _names(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose among {list(BENCHMARKS)}")
    return names


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {k:<17} {v[1]}" for k, v in BENCHMARKS.items())
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="jipkit data-layer and federation benchmarks; ratios against baselines measured in the same run.",
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only", action="append", metavar="NAME", help="run only these (repeat, or comma-separate)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: a smoke test")
    p.add_argument("--rounds", type=int, help="override the number of rounds of every benchmark")
    p.add_argument("--profile", action="store_true", help="print a cProfile of jipkit's side (stderr)")
    p.add_argument("--no-cold", action="store_true", help="never drop the page cache (no cold-cache load)")
    p.add_argument("--tmp", type=Path, help="parent folder of the scratch folder (default: the system's)")
    return p


def _sizes(quick: bool, rounds: int | None) -> Sizes:
    sizes = Sizes.quick() if quick else Sizes()
    if rounds is None:
        return sizes
    fields: dict[str, Any] = {
        f.name: rounds for f in dataclasses.fields(sizes) if f.name.endswith(("_rounds", "_runs"))
    }
    return dataclasses.replace(sizes, **fields)


def _run_one(name: str, ctx: Context) -> tuple[list[Table], bool]:
    print(f"\n[{name}] {BENCHMARKS[name][1]}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"{__package__}.{BENCHMARKS[name][0]}")
        tables: list[Table] = module.run(ctx)
    except Exception:
        traceback.print_exc()
        return [Table(f"{name}: FAILED", skipped="error, see the traceback on stderr")], False
    ctx.say(f"{name} took {time.perf_counter() - start:.1f} s")
    return tables, True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks and print their tables; 1 when one of them failed."""
    args = _parser().parse_args(argv)
    names = _names(args.only)
    sizes = _sizes(args.quick, args.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="jip-bench-", dir=args.tmp))
    ok = True
    start = time.perf_counter()
    print(f"jipkit benchmarks ({'quick' if args.quick else 'full'} sizes, {os.cpu_count()} CPUs)")
    print("figures are medians; ratio = speed of the row / speed of the 'vs' baseline (>1: faster),")
    print("the median of per-round ratios; baselines are measured in the same run, interleaved.")
    try:
        for name in names:
            ctx = Context(tmp=tmp / name, sizes=sizes, profile=args.profile, cold=not args.no_cold)
            ctx.tmp.mkdir()
            tables, good = _run_one(name, ctx)
            ok = ok and good
            for table in tables:
                print("\n" + table.render(), flush=True)
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
