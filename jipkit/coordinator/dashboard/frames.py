"""Untrusted content, each in its own document for an ``<iframe sandbox>``.

Served under ``/ui/frames/`` with the sandboxing Content-Security-Policy
(:data:`~jipkit.coordinator.dashboard.security.FRAME_CSP`, set by the security headers
middleware for every path there); built by :mod:`jipkit.coordinator.dashboard.render`.
Rendering is CPU work: the handlers are plain ``def``, run in FastAPI's worker threads.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from jipkit.coordinator.access import refused
from jipkit.coordinator.dashboard.auth import require_session, service
from jipkit.coordinator.dashboard.render import notebook_document, outputs_document
from jipkit.coordinator.dashboard.templating import PREFIX

__all__ = ["router"]

router = APIRouter(prefix=f"{PREFIX}/frames", include_in_schema=False)


@router.get("/versions/{vh}")
def notebook_frame(request: Request, vh: str) -> Response:
    """A notebook version's cells (members of its study)."""
    session = require_session(request)
    version = service(request).get_notebook(session.user, vh)
    return HTMLResponse(notebook_document(version["notebook"], f"notebook {vh[:12]}"))


@router.get("/runs/{run_id}/sites/{site}")
def outputs_frame(request: Request, run_id: str, site: str) -> Response:
    """A site's outputs of a run (members of its study)."""
    session = require_session(request)
    results = service(request).run_results(session.user, run_id)
    entry = next((s for s in results["sites"] if s["site"] == site), None)
    if entry is None:
        raise refused(404, "not_found", f"Run {run_id} has no job at site {site!r}.")
    return HTMLResponse(outputs_document(entry["outputs"], f"outputs of {site}"))
