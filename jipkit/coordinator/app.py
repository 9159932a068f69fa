"""The coordinator's web service: the HTTP contract of :mod:`jipkit.protocol.api` over
:class:`~jipkit.coordinator.service.Service`.

Every endpoint but three needs a bearer token and checks its holder's role (in the
service): ``POST /auth/token`` takes a password, ``POST /sites/enrol`` a one-time enrol
token, and the OpenAPI document (``/openapi.json``, ``/docs``) is public.  Errors answer
``{"detail": ..., "reason": ...}``.

The same app serves the dashboard for people's browsers under ``/ui/``
(:mod:`jipkit.coordinator.dashboard`: session cookies instead of bearer tokens, HTML
pages, and errors as pages).

One process, one event loop: each handler's database work is a few short statements
run on the loop (no thread hand-off).  CPU work runs in worker threads, so that it
never stalls the loop: argon2 password checks, and the handlers that parse notebooks
or results (submit, get a version, a run's results, a site's result); the dashboard's
pages likewise (:mod:`jipkit.coordinator.dashboard`).  The long poll ``GET /site/jobs/next`` waits on an :class:`asyncio.Event` per
site, set when a job is queued for that site (a new run, or a lease that ran out), so
a thousand idle runners cost a thousand parked coroutines and no database work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from jipkit.coordinator import dashboard
from jipkit.coordinator.config import CoordinatorConfig
from jipkit.coordinator.service import Principal, Service, SitePrincipal, User, refused
from jipkit.errors import CoordinatorError, JipError, NotebookError, SignatureError
from jipkit.protocol.api import API

__all__ = ["JobSignal", "create_app"]

log = logging.getLogger(__name__)

_STATUS_REASONS = {
    400: "request_invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


class JobSignal:
    """Wakes the long polls of sites that have a job queued.

    A waiter takes its site's current event *before* it looks for a job, and
    :meth:`notify` sets that event and drops it, so a job queued between the look and
    the wait is never missed.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, site: str) -> asyncio.Event:
        """The event the next job for ``site`` will set."""
        ev = self._events.get(site)
        if ev is None:
            ev = self._events[site] = asyncio.Event()
        return ev

    def notify(self, sites: Iterable[str]) -> None:
        """Wake every long poll of these sites."""
        for site in sites:
            ev = self._events.pop(site, None)
            if ev is not None:
                ev.set()


# ---------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Body):
    """A user's name and password, exchanged for an API token."""

    username: str
    password: str = Field(repr=False)


class EnrolRequest(_Body):
    """A site's enrolment: its name, one-time enrol token and public key."""

    site: str
    enrol_token: str = Field(repr=False)
    public_key: str = Field(description="the site's Ed25519 public key, 32 bytes base64")


class StudyRequest(_Body):
    """A new study: name, review quorum (default from the configuration), sites."""

    name: str
    review_quorum: int | None = Field(default=None, ge=1, le=20)
    sites: list[str] = Field(default_factory=list)


class MemberRequest(_Body):
    """A role for a user in a study."""

    username: str
    role: Literal["scientist", "reviewer", "coordinator"]


class NotebookRequest(_Body):
    """A notebook to submit as a version."""

    notebook: dict[str, Any] = Field(description="an nbformat 4 notebook")


class ReviewRequest(_Body):
    """A reviewer's decision on a version."""

    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=2000)


class RunRequest(_Body):
    """A run of an approved version: parameters, target sites, per-job deadline."""

    study: str
    version_hash: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    sites: list[str] | None = Field(default=None, description="default: every site of the study")
    deadline_s: int = Field(default=600, ge=1)


class LeaseRequest(_Body):
    """The attempt that renews its lease."""

    attempt: int


class HeldRequest(_Body):
    """The attempt whose result waits at the site for a data steward's release."""

    attempt: int


class DeclineRequest(_Body):
    """The attempt that declines its job, and a refusal reason code."""

    attempt: int
    reason: str


_ERROR = {
    "description": "refused",
    "content": {"application/json": {"example": {"detail": "...", "reason": "..."}}},
}
_RESULT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "description": "a signed jip.result/1"}}
        },
    }
}


def _error_response(status: int, detail: Any, reason: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status, headers=headers)


def _status_of(err: JipError) -> int:
    if isinstance(err, CoordinatorError) and err.status:
        return err.status
    if isinstance(err, NotebookError | SignatureError):
        return 400
    return 500


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="a user's API token or a site's token")


async def _principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise refused(401, "unauthenticated", "Send Authorization: Bearer <token>.")
    who = _service(request).authenticate(creds.credentials)
    if who is None:
        raise refused(401, "unauthenticated", "Unknown or expired token. Log in again (POST /auth/token).")
    return who


async def _site_principal(who: Annotated[Principal, Depends(_principal)]) -> SitePrincipal:
    if not isinstance(who, SitePrincipal):
        raise refused(403, "forbidden", "Only a site's runner, with its site token, may call this endpoint.")
    return who


async def _user_principal(who: Annotated[Principal, Depends(_principal)]) -> User:
    if not isinstance(who, User):
        raise refused(403, "forbidden", "A site token cannot call this endpoint: use a user's token.")
    return who


AnyCaller = Annotated[Principal, Depends(_principal)]
AUser = Annotated[User, Depends(_user_principal)]
ASite = Annotated[SitePrincipal, Depends(_site_principal)]


def create_app(config: CoordinatorConfig, *, service: Service | None = None) -> FastAPI:
    """The coordinator's FastAPI application.

    Parameters
    ----------
    config : CoordinatorConfig
    service : Service, optional
        The service to serve (tests); default :meth:`Service.open` of ``config`` when
        the application starts.

    Returns
    -------
    fastapi.FastAPI
        With its OpenAPI document at ``/openapi.json``.
    """
    signal = JobSignal()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = service or Service.open(config)
        app.state.service = svc
        dashboard.start(app, svc)
        reaper = asyncio.create_task(_reap(svc))
        log.info("coordinator at %s signing with key %s", config.url, svc.key.key_id)
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if service is None:
                svc.close()

    async def _reap(svc: Service) -> None:
        interval = min(1.0, config.lease_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                signal.notify(svc.expire_leases())
            except Exception:  # keep reaping: one failed pass must not stop lease expiry
                log.exception("lease expiry pass failed")

    app = FastAPI(
        title="JIP coordinator",
        version="1",
        description="Vetted, signed notebooks travel to site runners; only outputs and typed records come back.",
        lifespan=lifespan,
    )

    app.state.job_signal = signal
    dashboard.install(app, config)

    def _error(request: Request, status: int, detail: Any, reason: str) -> Response:
        if dashboard.owns(request):
            return dashboard.error_response(request, status, str(detail), reason)
        return _error_response(status, detail, reason)

    @app.exception_handler(JipError)
    async def _jip_error(request: Request, err: JipError) -> Response:
        return _error(request, _status_of(err), str(err), err.reason)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        parts = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return _error(request, 422, "Invalid request: " + "; ".join(parts) + ".", "request_invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        return _error(
            request, err.status_code, err.detail, _STATUS_REASONS.get(err.status_code, "http_error")
        )

    def svc() -> Service:
        return app.state.service  # type: ignore[no-any-return]

    errors: dict[int | str, dict[str, Any]] = {s: _ERROR for s in (400, 401, 403, 404, 409)}

    # ------------------------------------------------------------------ users

    @app.post(f"{API}/auth/token", tags=["users"], responses=errors)
    async def login(body: TokenRequest) -> dict[str, str]:
        """Exchange a username and password for an API token (shown once)."""
        token = await anyio.to_thread.run_sync(svc().login, body.username, body.password)
        return {"token": token}

    @app.get(f"{API}/keys", tags=["users", "sites"], responses=errors)
    async def keys(who: AnyCaller) -> dict[str, dict[str, str]]:
        """The coordinator's public signing keys ``{key_id: public_key}`` (any token)."""
        return {"keys": svc().public_keys()}

    @app.post(f"{API}/studies", status_code=201, tags=["studies"], responses=errors)
    async def create_study(body: StudyRequest, who: AUser) -> dict[str, Any]:
        """Create a study (admins)."""
        return svc().create_study(body.name, review_quorum=body.review_quorum, sites=body.sites, caller=who)

    @app.post(f"{API}/studies/{{study}}/members", tags=["studies"], responses=errors)
    async def add_member(study: str, body: MemberRequest, who: AUser) -> dict[str, str]:
        """Give a user a role in a study (admins)."""
        svc().grant_role(study, body.username, body.role, caller=who)
        return {"study": study, "username": body.username, "role": body.role}

    @app.post(f"{API}/studies/{{study}}/notebooks", tags=["notebooks"], responses=errors)
    async def submit(study: str, body: NotebookRequest, who: AUser) -> dict[str, Any]:
        """Submit a notebook as a version of the study (scientists of the study)."""
        return await run_in_threadpool(svc().submit_notebook, who, study, body.notebook)

    @app.get(f"{API}/studies", tags=["studies"], responses=errors)
    async def list_studies(who: AUser) -> dict[str, Any]:
        """The studies the caller holds a role in (admins: all), with the caller's roles."""
        return {"studies": svc().list_studies(who)}

    @app.get(f"{API}/studies/{{study}}/runs", tags=["runs"], responses=errors)
    async def list_runs(study: str, who: AUser) -> dict[str, Any]:
        """The study's runs, newest first, with their jobs' state counts (members of the study)."""
        return {"runs": svc().list_runs(who, study)}

    @app.get(f"{API}/studies/{{study}}/notebooks", tags=["notebooks"], responses=errors)
    async def list_versions(study: str, who: AUser) -> dict[str, Any]:
        """The study's versions and their review state (members of the study)."""
        return {"versions": svc().list_notebooks(who, study)}

    @app.get(f"{API}/notebooks/{{version_hash}}", tags=["notebooks"], responses=errors)
    async def get_version(version_hash: str, who: AUser) -> dict[str, Any]:
        """A version's canonical notebook and its reviews (members of its study)."""
        return await run_in_threadpool(svc().get_notebook, who, version_hash)

    @app.post(f"{API}/notebooks/{{version_hash}}/reviews", tags=["notebooks"], responses=errors)
    async def review(version_hash: str, body: ReviewRequest, who: AUser) -> dict[str, Any]:
        """Approve or reject a version (reviewers of its study, not its author)."""
        return svc().review(who, version_hash, body.decision, body.comment)

    @app.post(f"{API}/runs", status_code=201, tags=["runs"], responses=errors)
    async def start_run(body: RunRequest, who: AUser) -> dict[str, Any]:
        """Start a run of an approved version (coordinators of the study)."""
        out = svc().start_run(
            who, body.study, body.version_hash, body.parameters, body.sites, body.deadline_s
        )
        signal.notify(j["site"] for j in out["jobs"])
        return out

    @app.get(f"{API}/runs/{{run_id}}", tags=["runs"], responses=errors)
    async def get_run(run_id: str, who: AUser) -> dict[str, Any]:
        """A run and its per-site job states (members of its study)."""
        return svc().get_run(who, run_id)

    @app.post(f"{API}/runs/{{run_id}}/cancel", tags=["runs"], responses=errors)
    async def cancel_run(run_id: str, who: AUser) -> dict[str, Any]:
        """Cancel a run (coordinators of its study, admins)."""
        return svc().cancel_run(who, run_id)

    @app.get(f"{API}/runs/{{run_id}}/results", tags=["runs"], responses=errors)
    async def results(run_id: str, who: AUser) -> dict[str, Any]:
        """Per-site results and the combined records (members of its study)."""
        return await run_in_threadpool(svc().run_results, who, run_id)

    # ------------------------------------------------------------------ sites

    @app.post(f"{API}/sites/enrol", tags=["sites"], responses=errors)
    async def enrol(body: EnrolRequest) -> dict[str, Any]:
        """Enrol a site with its one-time enrol token; pins its public key."""
        return svc().enrol(body.site, body.enrol_token, body.public_key)

    @app.get(
        f"{API}/site/jobs/next",
        tags=["sites"],
        responses={**errors, 204: {"description": "no job within the wait"}},
    )
    async def next_job(
        request: Request,
        who: ASite,
        wait: Annotated[float, Query(ge=0, description="seconds to hold the poll (at most 25)")] = 25.0,
    ) -> Response:
        """Long poll: claim this site's oldest queued job (200 with the signed envelope), or 204."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, config.long_poll_max_s)
        while True:
            event = signal.event(who.name)  # before looking: a job queued meanwhile sets it
            claim = svc().claim_next(who)
            if claim is not None:
                return JSONResponse({"envelope": claim.envelope, "lease_expires_at": claim.lease_expires_at})
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Response(status_code=204)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return Response(status_code=204)
            if await request.is_disconnected():  # do not claim for a runner that hung up
                return Response(status_code=204)

    @app.post(f"{API}/site/jobs/{{job_id}}/lease", tags=["sites"], responses=errors)
    async def renew(job_id: str, body: LeaseRequest, who: ASite) -> dict[str, str]:
        """Renew the lease of the attempt holding it; 409 (lease_lost, cancelled): stop."""
        return {"lease_expires_at": svc().renew_lease(who, job_id, body.attempt)}

    @app.post(
        f"{API}/site/jobs/{{job_id}}/result", tags=["sites"], responses=errors, openapi_extra=_RESULT_BODY
    )
    async def post_result(job_id: str, request: Request, who: ASite) -> dict[str, Any]:
        """Post the signed result of the attempt holding the lease; the first accepted is final."""
        limit = config.max_result_bytes
        too_large = refused(413, "request_too_large", f"The result is larger than {limit} bytes.")
        if int(request.headers.get("content-length") or 0) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():  # a chunked upload is capped too
            body += chunk
            if len(body) > limit:
                raise too_large
        return await run_in_threadpool(svc().accept_result, who, job_id, bytes(body))

    @app.post(f"{API}/site/jobs/{{job_id}}/held", tags=["sites"], responses=errors)
    async def held(job_id: str, body: HeldRequest, who: ASite) -> dict[str, Any]:
        """The attempt holding the lease ran the job; its result waits at the site for release."""
        return svc().hold(who, job_id, body.attempt)

    @app.post(f"{API}/site/jobs/{{job_id}}/decline", tags=["sites"], responses=errors)
    async def decline(job_id: str, body: DeclineRequest, who: ASite) -> dict[str, Any]:
        """Decline a job this site holds, with a refusal reason code; final."""
        return svc().decline(who, job_id, body.attempt, body.reason)

    return app
