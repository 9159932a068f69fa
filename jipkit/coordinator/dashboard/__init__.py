"""The coordinator's dashboard: server-rendered pages under ``/ui/`` in the coordinator's app.

People log in with their password and get a session cookie; every page shows and
offers what their roles in a study allow, and every action goes through the same
:class:`~jipkit.coordinator.service.Service` methods (and checks) as the JSON API.

Routes (all under ``/ui``)::

    GET  /                        -> /ui/studies
    GET  /login, POST /login      password login (a session cookie); POST /logout
    GET  /studies                 the user's studies
    GET  /studies/{study}         versions and their review state, runs; upload (scientists)
    POST /studies/{study}/notebooks
    GET  /versions/{vh}           summary, parameters, notebook (sandboxed frame), diff against
                                  the previous version, reviews; review and run forms
    POST /versions/{vh}/reviews   approve or reject with a comment (reviewers, not the author)
    POST /versions/{vh}/runs      start a run (coordinators)
    GET  /runs/{run}              per-site status (live), results, plots, redaction reports,
                                  outputs (sandboxed frames), provenance
    GET  /runs/{run}/status       the live status (JSON, polled by static/run.js)
    POST /runs/{run}/cancel       (coordinators)
    GET  /runs/{run}/results.csv, /runs/{run}/combined.csv, /runs/{run}/plots/{name}.svg
    GET  /frames/versions/{vh}, /frames/runs/{run}/sites/{site}   untrusted content
    GET  /static/...              CSS and the live-status script

Modules, one job each::

    sessions.py    sessions in the database (hashed tokens), CSRF tokens
    security.py    security headers (CSP) middleware, Origin and CSRF checks
    auth.py        login, logout, the session of a request
    templating.py  Jinja2 (autoescape), pages and error pages
    views.py       studies and versions: pages, upload, review, start a run
    runs.py        run page, live status, cancel, CSV, plots
    frames.py      untrusted content in sandboxed frames (built by render.py)
    render.py      notebooks and site outputs as sandboxed HTML documents
    diff.py        a version as text and its unified diff
    tables.py      job states, results tables and CSV
    plots.py       matplotlib SVG plots of the combined records

See :mod:`jipkit.coordinator.dashboard.security` for the security design.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.dashboard import auth, frames, runs, views
from jipkit.coordinator.dashboard.auth import LoginRequired, login_redirect
from jipkit.coordinator.dashboard.security import SecurityHeaders
from jipkit.coordinator.dashboard.sessions import SessionStore
from jipkit.coordinator.dashboard.templating import PREFIX, STATIC, error_page
from jipkit.coordinator.service import Service

__all__ = ["PREFIX", "error_response", "install", "owns", "start"]


def install(app: FastAPI, config: CoordinatorConfig) -> None:
    """Add the dashboard's routes, static files, headers and login redirect to ``app``.

    Call :func:`start` once the service is open (in the app's lifespan).
    """
    app.state.dashboard_public_url = config.url
    app.add_middleware(SecurityHeaders, prefix=PREFIX)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="dashboard-static")
    for module in (auth, views, runs, frames):
        app.include_router(module.router)

    async def _login_required(request: Request, err: Exception) -> Response:
        if request.url.path.endswith("/status"):
            return JSONResponse(
                {"detail": "Your session ended. Log in again.", "reason": "unauthenticated"}, status_code=401
            )
        return login_redirect(request)

    app.add_exception_handler(LoginRequired, _login_required)


def start(app: FastAPI, service: Service) -> None:
    """Open the session store on the service's database (makes its table when missing)."""
    app.state.dashboard_sessions = SessionStore(service.db, service._clock)


def owns(request: Request) -> bool:
    """Whether a request is the dashboard's (its errors are pages, not JSON)."""
    path = request.url.path
    return (path == PREFIX or path.startswith(PREFIX + "/")) and not path.endswith("/status")


def error_response(request: Request, status: int, detail: str, reason: str) -> Response:
    """A dashboard error as a page (with the session's user, when there is one)."""
    if not hasattr(request.state, "dashboard_session"):
        auth.current_session(request)
    return error_page(request, status, detail, reason)
