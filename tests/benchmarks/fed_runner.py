"""Federation benchmark 1: the site runner's per-job overhead against plain papermill.

A trivial notebook (one parameters cell, one ``jip.record``) run two ways in this
process, in the same ``jip`` kernel (``<venv>/share/jupyter/kernels/jip``), rounds
interleaved:

- the runner end to end against a real coordinator over HTTP: one
  :meth:`jipkit.site.runner.Runner.run_once` with the job already queued (claim, verify
  the envelope, execute with papermill in a fresh run folder, collect outputs and
  records, sign, upload until the coordinator accepts the result); queuing the job
  (``POST /runs``) is not timed;
- ``papermill.execute_notebook`` of the same notebook with the same parameters, with
  papermill's defaults (an output file, no progress bar).

Each runner phase is timed too, by wrapping the runner's methods in this process.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jipkit.site.runner as runner_module
from jipkit.site.runner import Runner

from ._common import Context, Method, Row, Table, Target, interleave, median, speedup
from ._federation import (
    STUDY,
    Federation,
    federation,
    jupyter_dirs,
    kernel_missing,
    plural,
    trivial_notebook,
)

__all__ = ["run"]

TITLE = "runner: per-job overhead on a trivial notebook (real coordinator over HTTP)"
RUNNER = "jip runner: claim -> result accepted"
PAPERMILL = "papermill.execute_notebook"
IMMEDIATE = "papermill, shutdown_kernel='immediate'"
SITE = "bench-site"
_VERIFY = "check_envelope"
GOAL = 1.3  # the runner may take at most this many times papermill's time
#: runner phase -> what it covers
PHASES = {
    "claim": "GET /site/jobs/next (job already queued)",
    "verify": "check_envelope: signature, expiry, policy, replay",
    "execute": "run_notebook: run folder, kernel, papermill, outputs and records",
    "sign": "result document signed (Ed25519, canonical JSON)",
    "upload": "POST /site/jobs/{id}/result until accepted",
    "state": "runner state database (start, finish)",
}


class _Phases:
    """Seconds spent in each wrapped callable, per round."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return timed


@contextmanager
def _instrumented(runner: Runner, phases: _Phases) -> Iterator[None]:
    """Time the runner's phases (its own methods, wrapped on the instance and module)."""
    for phase, obj, attr in (
        ("claim", runner.client, "next_job"),
        ("execute", runner, "_execute"),
        ("sign", runner, "_sign"),
        ("upload", runner, "_upload"),
        ("state", runner.state, "start"),
        ("state", runner.state, "finish"),
    ):
        setattr(obj, attr, phases.wrap(phase, getattr(obj, attr)))
    original = getattr(runner_module, _VERIFY)  # the runner module's own name for it
    setattr(runner_module, _VERIFY, phases.wrap("verify", original))
    try:
        yield
    finally:
        setattr(runner_module, _VERIFY, original)


def run(ctx: Context) -> list[Table]:
    rounds = ctx.sizes.runner_rounds
    title = f"{TITLE} ({plural(rounds, 'round')})"
    missing = kernel_missing()
    if missing is not None:
        return [Table(title, skipped=missing)]
    with jupyter_dirs(ctx.folder("jupyter")), federation(ctx.folder("fed"), [SITE], lease_s=60.0) as fed:
        return [_measure(ctx, fed, title, rounds)]


def _measure(ctx: Context, fed: Federation, title: str, rounds: int) -> Table:
    import papermill  # type: ignore[import-untyped]
    from jupyter_client.kernelspec import KernelSpecManager

    from jipkit.site.execute import check_kernel

    nb = trivial_notebook()
    vh = fed.approved_version(nb)
    config = fed.site_config(SITE)
    source = ctx.tmp / "trivial.ipynb"
    source.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    out_dir = ctx.folder("papermill")
    dave = fed.client("dave")
    counter = [0]
    phases = _Phases()
    per_round: list[dict[str, float]] = []

    def queue_job() -> None:
        counter[0] += 1
        dave.start_run(STUDY, vh, {"n": counter[0]}, sites=[SITE], deadline_s=120)
        phases.seconds = {}

    with Runner(config) as runner, _instrumented(runner, phases):

        def runner_job() -> None:
            report = runner.run_once(wait_s=10)
            if report is None or (report.status, report.delivered) != ("succeeded", True):
                raise RuntimeError(f"the runner's job did not succeed: {report}")
            per_round.append(dict(phases.seconds))

        def papermill_job(**kw: Any) -> None:
            counter[0] += 1
            papermill.execute_notebook(
                str(source),
                str(out_dir / f"out-{counter[0]}.ipynb"),
                parameters={"n": counter[0]},
                kernel_name="jip",
                progress_bar=False,
                execution_timeout=120,
                **kw,
            )

        methods = [
            Method(RUNNER, runner_job, prepare=queue_job),
            Method(PAPERMILL, papermill_job),
            Method(IMMEDIATE, functools.partial(papermill_job, shutdown_kernel="immediate")),
        ]
        warm = ctx.sizes.federation_warmup
        ctx.say(
            f"{plural(rounds, 'round')} of a runner job and two papermill runs"
            + (" (after one untimed of each)" if warm else "")
        )
        try:
            times = interleave(methods, rounds, warmup=warm)
            if ctx.profile:
                queue_job()
                ctx.run_profile("one runner job (claim -> result accepted)", runner_job)
        finally:
            dave.close()
    skip = 1 if warm else 0
    per_round = per_round[skip : skip + rounds]  # not the warm-up's, nor the profiled one's

    r, p = times[RUNNER], times[PAPERMILL]
    time_ratio = median([a / b for a, b in zip(r, p, strict=True)])
    table = Table(title)
    table.add(Row(PAPERMILL, median(p), "s"))
    table.add(Row(IMMEDIATE, median(times[IMMEDIATE]), "s"))
    table.add(Row(RUNNER, median(r), "s", speedup(r, p), PAPERMILL))
    table.add(Row(RUNNER, median(r), "s", speedup(r, times[IMMEDIATE]), IMMEDIATE))
    table.add(
        Row(
            "runner time / papermill time",
            time_ratio,
            "x",
            target=Target("<", GOAL, "figure"),
        )
    )
    table.add(Row("runner overhead per job", median([a - b for a, b in zip(r, p, strict=True)]), "s"))
    for phase in PHASES:
        values = [d.get(phase, 0.0) for d in per_round]
        table.add(Row(f"  runner phase: {phase}", median(values), "s"))
    other = [t - sum(d.values()) for t, d in zip(r, per_round, strict=True)]
    table.add(Row("  runner phase: other", median(other), "s"))
    venv_spec = check_kernel("jip")
    pm_spec = Path(KernelSpecManager().get_kernel_spec("jip").resource_dir)
    same = "the same kernelspec" if pm_spec.resolve() == venv_spec.resolve() else f"NOT the same: {pm_spec}"
    table.notes.append(
        f"both run kernel 'jip' ({venv_spec}; papermill resolves {same}); ratio = papermill time / "
        f"runner time per round (>1: the runner is faster); target: at most {GOAL:g}x papermill's time"
    )
    table.notes.append(
        "phases: " + "; ".join(f"{k} = {v}" for k, v in PHASES.items()) + "; other = the rest of run_once"
    )
    table.notes.append(
        "the runner kills its kernel at once after the last cell (shutdown_kernel='immediate') and uses "
        "IPC channels; papermill shuts its kernel down gracefully over TCP by default, hence the second "
        "baseline with papermill's immediate shutdown: the runner's own cost shows against that one"
    )
    return table
