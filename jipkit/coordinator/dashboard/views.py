"""Studies and notebook versions: the pages, and the forms that submit, review and start runs.

What a page offers follows the user's roles in the study (a review form for its
reviewers other than the author, a run form for its coordinators, an upload form for its
scientists); the service checks every action again, whatever the page showed.

Pages are CPU work (a notebook parsed, diffed and rendered): the GET handlers are plain
``def``, run in FastAPI's worker threads, and the form handlers read their form on the
event loop (the CSRF check) and do the rest with ``run_in_threadpool``, so the loop
that serves the sites' long polls never waits on them.  Only waking the sites' long
polls after a new run happens back on the loop (asyncio events are not thread-safe).
"""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from jipkit.coordinator.access import refused
from jipkit.coordinator.dashboard.auth import post_form, require_session, service
from jipkit.coordinator.dashboard.diff import previous_version, unified_diff
from jipkit.coordinator.dashboard.sessions import Session
from jipkit.coordinator.dashboard.tables import job_status
from jipkit.coordinator.dashboard.templating import PREFIX, page
from jipkit.errors import CoordinatorError, NotebookError

__all__ = ["router"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_MAX_NOTEBOOK_BYTES: Final = 8 * 1024**2


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


@router.get("/studies")
def studies(request: Request) -> Response:
    """The studies the user takes part in (every study for an admin)."""
    session = require_session(request)
    return page(request, "studies.html", studies=service(request).list_studies(session.user))


def _study_page(
    request: Request, session: Session, study: str, *, error: str | None = None, status: int = 200
) -> Response:
    svc = service(request)
    info = svc.get_study(session.user, study)
    runs = [
        {
            **r,
            "summary": ", ".join(
                f"{n} {job_status({'state': s})['kind']}" for s, n in sorted(r["counts"].items())
            ),
        }
        for r in svc.list_runs(session.user, study)
    ]
    return page(
        request,
        "study.html",
        status=status,
        study=info,
        versions=svc.list_notebooks(session.user, study),
        runs=runs,
        error=error,
    )


@router.get("/studies/{study}")
def study_page(request: Request, study: str) -> Response:
    """A study: its versions and their review state, its runs; upload for scientists."""
    return _study_page(request, require_session(request), study)


@router.post("/studies/{study}/notebooks")
async def submit(request: Request, study: str) -> Response:
    """Submit an uploaded ``.ipynb`` as a version of the study (its scientists)."""
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > _MAX_NOTEBOOK_BYTES + 65536:
        raise refused(413, "request_too_large", f"The notebook is larger than {_MAX_NOTEBOOK_BYTES} bytes.")
    session, form = await post_form(request)
    upload = form.get("notebook")
    if not isinstance(upload, UploadFile):
        return await run_in_threadpool(
            _study_page,
            request,
            session,
            study,
            error="Choose a notebook file (.ipynb) to submit.",
            status=400,
        )
    data = await upload.read(_MAX_NOTEBOOK_BYTES + 1)
    return await run_in_threadpool(_submit, request, session, study, data)


def _submit(request: Request, session: Session, study: str, data: bytes) -> Response:
    if len(data) > _MAX_NOTEBOOK_BYTES:
        return _study_page(
            request,
            session,
            study,
            error=f"The notebook is larger than {_MAX_NOTEBOOK_BYTES} bytes.",
            status=413,
        )
    try:
        out = service(request).submit_notebook(session.user, study, data.decode("utf-8", errors="strict"))
    except UnicodeDecodeError:
        return _study_page(
            request, session, study, error="The notebook is not UTF-8 text (.ipynb JSON).", status=400
        )
    except (NotebookError, CoordinatorError) as err:
        if isinstance(err, CoordinatorError) and err.status in (403, 404):
            raise
        return _study_page(
            request,
            session,
            study,
            error=str(err),
            status=400 if isinstance(err, NotebookError) else err.status or 400,
        )
    done = "existing" if out["existing"] else "submitted"
    return _redirect(f"{PREFIX}/versions/{out['version_hash']}?done={done}")


def _version_page(
    request: Request,
    session: Session,
    vh: str,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, Any] | None = None,
) -> Response:
    svc = service(request)
    version = svc.get_notebook(session.user, vh)
    study = svc.get_study(session.user, version["study"])
    versions = svc.list_notebooks(session.user, version["study"])
    against = request.query_params.get("against") or previous_version(versions, vh)
    base = None
    diff = []
    if against and against != vh and any(v["version_hash"] == against for v in versions):
        base = svc.get_notebook(session.user, against)
        diff = unified_diff(
            base["notebook"], version["notebook"], f"version {against[:12]}", f"version {vh[:12]}"
        )
    roles = set(study["roles"])
    mine = version["author"] == session.user.username
    needed = max(0, version["review_quorum"] - version["approvals"]) if version["state"] == "pending" else 0
    defaults = {name: spec.get("default") for name, spec in version["parameters"].items()}
    return page(
        request,
        "version.html",
        status=status,
        version=version,
        study=study,
        others=[v for v in versions if v["version_hash"] != vh],
        base=base,
        diff=diff,
        needed=needed,
        can_review="reviewer" in roles and not mine,
        review_note=(
            "You wrote this version: its author cannot review it."
            if mine and "reviewer" in roles
            else None
            if "reviewer" in roles
            else "Only the study's reviewers review versions."
        ),
        can_run="coordinator" in roles and version["state"] == "approved",
        form=form
        or {"parameters": json.dumps(defaults, indent=1), "deadline_s": 600, "sites": study["sites"]},
        error=error,
    )


@router.get("/versions/{vh}")
def version_page(request: Request, vh: str) -> Response:
    """A notebook version: summary, parameters, the rendered notebook, its diff, reviews, forms."""
    return _version_page(request, require_session(request), vh)


@router.post("/versions/{vh}/reviews")
async def review(request: Request, vh: str) -> Response:
    """Approve or reject a version with a comment (reviewers of its study other than its author)."""
    session, form = await post_form(request)
    return await run_in_threadpool(_review, request, session, vh, form)


def _review(request: Request, session: Session, vh: str, form: FormData) -> Response:
    decision, comment = form.get("decision"), form.get("comment") or ""
    if decision not in ("approve", "reject") or not isinstance(comment, str):
        return _version_page(request, session, vh, error="Choose approve or reject.", status=400)
    try:
        service(request).review(session.user, vh, str(decision), comment[:2000])
    except CoordinatorError as err:
        if err.status == 404:
            raise
        return _version_page(request, session, vh, error=str(err), status=err.status or 400)
    return _redirect(f"{PREFIX}/versions/{vh}?done={decision}")


@router.post("/versions/{vh}/runs")
async def start_run(request: Request, vh: str) -> Response:
    """Start a run of an approved version on the chosen sites (coordinators of its study)."""
    session, form = await post_form(request)
    response, sites = await run_in_threadpool(_start_run, request, session, vh, form)
    if sites:
        request.app.state.job_signal.notify(sites)  # on the loop: asyncio events are not thread-safe
    return response


def _start_run(request: Request, session: Session, vh: str, form: FormData) -> tuple[Response, list[str]]:
    """The response to the run form, and the sites a started run queued jobs for."""
    text = form.get("parameters") or "{}"
    sites = [str(s) for s in form.getlist("sites")]
    deadline = form.get("deadline_s") or "600"
    kept = {"parameters": str(text), "deadline_s": str(deadline), "sites": sites}
    try:
        parameters = json.loads(str(text))
        if not isinstance(parameters, dict):
            raise ValueError("not an object")
        deadline_s = int(str(deadline))
    except ValueError as err:
        return _version_page(
            request,
            session,
            vh,
            error=f"Expected the parameters as a JSON object and the deadline in whole seconds ({err}).",
            status=400,
            form=kept,
        ), []
    if not sites:
        return _version_page(
            request, session, vh, error="Choose at least one site.", status=400, form=kept
        ), []
    svc = service(request)
    version = svc.get_notebook(session.user, vh)
    try:
        out = svc.start_run(session.user, version["study"], vh, parameters, sites, deadline_s)
    except (CoordinatorError, NotebookError) as err:
        if isinstance(err, CoordinatorError) and err.status == 404:
            raise
        status = err.status if isinstance(err, CoordinatorError) and err.status else 400
        return _version_page(request, session, vh, error=str(err), status=status, form=kept), []
    return _redirect(f"{PREFIX}/runs/{out['run_id']}?done=started"), [j["site"] for j in out["jobs"]]
