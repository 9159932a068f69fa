"""Federation benchmark 2: submit-to-results latency of a trivial notebook at three sites.

A real coordinator (``jip coordinator serve``) and three real runners (``jip site run``
subprocesses, each enrolled with its own key and token, long-polling).  Each timed run:
alice submits a new version of a trivial notebook (one parameters cell, one
``jip.record``), bob and carol approve it, dave starts a run at the three sites, and
dave's client polls the run (every 50 ms) until every site's result is in.  One untimed
run first warms the runners up (their first job imports papermill), except with ``--quick``.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from jipkit.protocol.messages import parse_time

from ._common import Context, Method, Row, Table, interleave, median
from ._federation import STUDY, Federation, federation, kernel_missing, plural, trivial_notebook

__all__ = ["run"]

TITLE = "latency: submit -> 2 approvals -> run -> results, trivial notebook at 3 sites"
SITES = ("site-a", "site-b", "site-c")
POLL_S = 0.05


def run(ctx: Context) -> list[Table]:
    runs = ctx.sizes.latency_runs
    title = f"{TITLE} ({plural(runs, 'run')})"
    missing = kernel_missing()
    if missing is not None:
        return [Table(title, skipped=missing)]
    with federation(ctx.folder("fed"), SITES, lease_s=60.0) as fed:
        ctx.say("enrolling 3 sites and starting their runners (jip site run)")
        runners = [fed.start_runner(fed.site_config(name)) for name in SITES]
        for runner in runners:
            runner.wait_ready()
        return [_measure(ctx, fed, title, runs)]


def _seconds(a: str, b: str) -> float:
    return (parse_time(b) - parse_time(a)) / dt.timedelta(seconds=1)


def _measure(ctx: Context, fed: Federation, title: str, runs: int) -> Table:
    counter = [0]
    review_s: list[float] = []
    results_s: list[float] = []
    execute_s: list[float] = []
    alice, bob, carol, dave = (fed.client(u) for u in ("alice", "bob", "carol", "dave"))

    def one_run() -> None:
        counter[0] += 1
        start = time.perf_counter()
        vh = alice.submit_notebook(STUDY, trivial_notebook(f"latency run {counter[0]}"))["version_hash"]
        bob.review(vh, "approve", "benchmark")
        carol.review(vh, "approve", "benchmark")
        run_id = dave.start_run(STUDY, vh, {"n": counter[0]}, sites=list(SITES), deadline_s=120)["run_id"]
        started = time.perf_counter()

        def progress(_: dict[str, Any]) -> None:
            for runner in fed.runners:
                runner.check()

        dave.wait_run(run_id, timeout=120, poll_s=POLL_S, on_progress=progress)
        done = time.perf_counter()
        res = dave.results(run_id)
        bad = [(s["site"], s["state"], s["reason"]) for s in res["sites"] if s["state"] != "succeeded"]
        if bad or len(res["sites"]) != len(SITES):
            raise RuntimeError(f"run {run_id} did not succeed at every site: {bad}")
        review_s.append(started - start)
        results_s.append(done - started)
        execute_s.extend(_seconds(s["started_at"], s["finished_at"]) for s in res["sites"])

    try:
        warm = ctx.sizes.federation_warmup
        ctx.say(f"{plural(runs, 'run')} at {len(SITES)} sites" + (" (after one untimed)" if warm else ""))
        times = interleave([Method("latency", one_run)], runs, warmup=warm)["latency"]
    finally:
        for c in (alice, bob, carol, dave):
            c.close()
    if warm:  # not the warm-up run's figures
        review_s, results_s, execute_s = review_s[1:], results_s[1:], execute_s[len(SITES) :]
    table = Table(title)
    table.add(Row("submit -> all 3 results in", median(times), "s"))
    table.add(Row("  submit + 2 approvals + start run", median(review_s), "s"))
    table.add(Row("  run started -> all 3 results in", median(results_s), "s"))
    table.add(Row("  notebook run at a site (run_notebook start to end)", median(execute_s), "s"))
    table.notes.append(
        f"min {min(times):.2f} s, max {max(times):.2f} s; three runners on {os.cpu_count()} CPUs run their "
        f"kernels at once; the run is polled every {POLL_S * 1000:.0f} ms (GET /runs/ID)"
    )
    table.notes.append(
        "'notebook run at a site' is started_at -> finished_at of the signed results (all sites, all runs)"
    )
    return table
