"""Runs and their results: the run page, its live status, cancel, CSV downloads and plots.

The run page shows each site's job state and, through ``static/run.js``, polls
``status`` every 1.5 s until every job is final.  Results: the per-site and combined
tables (suppressed shown as suppressed), plots of the combined records, CSV downloads,
each site's redaction report, outputs (in a sandboxed frame) and provenance.

The handlers that read results (JSON parsing, pooling with pandas, tables, CSV and
matplotlib plots) are plain ``def``: FastAPI runs them in its worker threads, so this
CPU work never stalls the event loop that serves the sites' long polls.  The session
lookup and the service are safe there (the database's connection is serialised by a
lock); only the live status, a few short statements, and the cancel form (its CSRF
check reads the form, which needs the loop) stay on the loop.
"""

from __future__ import annotations

import re
from typing import Any, Final

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from jipkit.coordinator.access import refused
from jipkit.coordinator.dashboard.auth import post_form, require_session, service
from jipkit.coordinator.dashboard.plots import plot_names, record_plot_svg
from jipkit.coordinator.dashboard.tables import (
    combined_csv,
    combined_rows,
    job_status,
    records_csv,
    site_rows,
)
from jipkit.coordinator.dashboard.templating import PREFIX, page

__all__ = ["router"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_FILE_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def status_document(run: dict[str, Any]) -> dict[str, Any]:
    """What the live status shows: the run's state and each job's label and kind."""
    jobs = [job_status(j) for j in run["jobs"]]
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "final": run["state"] != "running",
        "done": sum(1 for j in jobs if j["final"]),
        "total": len(jobs),
        "jobs": jobs,
    }


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    """A run: per-site status (live), cancel, and its results once they come."""
    session = require_session(request)
    svc = service(request)
    run = svc.get_run(session.user, run_id)
    results = svc.run_results(session.user, run_id)
    study = svc.get_study(session.user, run["study"])
    names, rows = site_rows(results)
    disclosure = svc.result_disclosure(session.user, run_id)
    sites = [
        {
            **s,
            "status": job_status(s),
            "disclosure": disclosure.get(s["site"], {"redactions": None, "isolation": None, "kernel": None}),
            "has_result": s["status"] is not None,
        }
        for s in results["sites"]
    ]
    return page(
        request,
        "run.html",
        run=run,
        live=status_document(run),
        study=study,
        results=results,
        names=names,
        rows=rows,
        combined=combined_rows(results),
        plots=plot_names(results),
        sites=sites,
        can_cancel=("coordinator" in study["roles"] or session.user.is_admin) and run["state"] == "running",
        any_result=any(s["has_result"] for s in sites),
    )


@router.get("/runs/{run_id}/status")
async def run_status(request: Request, run_id: str) -> Response:
    """The run's live status as JSON (polled by the run page)."""
    session = require_session(request)
    return JSONResponse(status_document(service(request).get_run(session.user, run_id)))


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str) -> Response:
    """Cancel a run (coordinators of its study, admins)."""
    session, _ = await post_form(request)
    service(request).cancel_run(session.user, run_id)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}?done=cancelled", status_code=303)


def _csv(text: str, filename: str) -> Response:
    return PlainTextResponse(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_FILE_SAFE.sub("_", filename)}"'},
    )


@router.get("/runs/{run_id}/results.csv")
def results_csv(request: Request, run_id: str) -> Response:
    """Every site's records as CSV (one row per site and record)."""
    session = require_session(request)
    return _csv(records_csv(service(request).run_results(session.user, run_id)), f"{run_id}-records.csv")


@router.get("/runs/{run_id}/combined.csv")
def combined_csv_file(request: Request, run_id: str) -> Response:
    """The combined (pooled) records as CSV."""
    session = require_session(request)
    return _csv(combined_csv(service(request).run_results(session.user, run_id)), f"{run_id}-combined.csv")


@router.get("/runs/{run_id}/plots/{name}.svg")
def plot(request: Request, run_id: str, name: str) -> Response:
    """The plot of one combined record (SVG)."""
    session = require_session(request)
    results = service(request).run_results(session.user, run_id)
    try:
        svg = record_plot_svg(results, name)
    except KeyError:
        raise refused(404, "not_found", f"Run {run_id} has no count or measure named {name!r}.") from None
    return Response(svg, media_type="image/svg+xml")
