"""Log in, log out, and who is asking: the dashboard's session cookie and its checks.

Login takes a username and password (checked by the service's argon2 hashes, off the
event loop) and sets the session cookie: ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui``,
``Secure`` when the coordinator's public URL (or the request) is https.  The login form
itself carries a token bound to a short-lived cookie (a double submit), so another site
cannot log a browser in under its own account; every later POST carries the session's
CSRF token (:func:`post_form`).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final
from urllib.parse import quote, urlsplit

import anyio
from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from jipkit.coordinator.dashboard.security import check_origin, check_post
from jipkit.coordinator.dashboard.sessions import Session, SessionStore
from jipkit.coordinator.dashboard.templating import PREFIX, page
from jipkit.coordinator.service import Service
from jipkit.errors import CoordinatorError

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "LoginRequired",
    "current_session",
    "post_form",
    "require_session",
    "router",
    "service",
]

SESSION_COOKIE: Final = "jip_session"
LOGIN_COOKIE: Final = "jip_login"
_LOGIN_FORM_TTL_S: Final = 3600

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class LoginRequired(Exception):
    """No valid session: the browser is sent to the login page."""


def service(request: Request) -> Service:
    """The coordinator's service."""
    return request.app.state.service  # type: ignore[no-any-return]


def _store(request: Request) -> SessionStore:
    return request.app.state.dashboard_sessions  # type: ignore[no-any-return]


def public_url(request: Request) -> str:
    """The coordinator's public URL (from its configuration)."""
    return str(request.app.state.dashboard_public_url)


def _secure(request: Request) -> bool:
    return public_url(request).startswith("https://") or request.url.scheme == "https"


def current_session(request: Request) -> Session | None:
    """The session of the request's cookie, if valid (also kept on ``request.state``)."""
    session = _store(request).find(request.cookies.get(SESSION_COOKIE))
    request.state.dashboard_session = session
    return session


def require_session(request: Request) -> Session:
    """The request's session; :class:`LoginRequired` without a valid one."""
    session = current_session(request)
    if session is None:
        raise LoginRequired
    return session


async def post_form(request: Request) -> tuple[Session, FormData]:
    """The session and form of a POST, after its Origin and CSRF checks (403 when one fails)."""
    session = require_session(request)
    form = await check_post(request, public_url(request), session.csrf)
    return session, form


def _safe_next(value: object) -> str:
    """A dashboard path to go to after login; anything else (another site, a scheme) is ignored."""
    default = f"{PREFIX}/studies"
    if not isinstance(value, str) or not value.startswith(PREFIX + "/") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or value.startswith("//"):
        return default
    return value


def _login_form(request: Request, *, error: str | None = None, status: int = 200, nxt: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "login.html", status=status, error=error, login_csrf=token, next=_safe_next(nxt))
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=_LOGIN_FORM_TTL_S,
        path=f"{PREFIX}/login",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/")
async def home(request: Request) -> Response:
    """The dashboard's entry: the studies."""
    return RedirectResponse(f"{PREFIX}/studies", status_code=303)


@router.get("/login")
async def login_page(request: Request) -> Response:
    """The login form (or the studies, for a browser that is logged in)."""
    nxt = request.query_params.get("next", "")
    if current_session(request) is not None:
        return RedirectResponse(_safe_next(nxt), status_code=303)
    return _login_form(request, nxt=nxt)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password; start a session and go where the user was going."""
    check_origin(request, public_url(request))
    form = await request.form()
    nxt = form.get("next")
    sent, expected = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if not (isinstance(sent, str) and expected and hmac.compare_digest(sent.encode(), expected.encode())):
        return _login_form(
            request,
            error="The login form expired or did not come from this page. Please log in again.",
            status=403,
            nxt=str(nxt or ""),
        )
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        return _login_form(request, error="Enter your username and password.", status=400, nxt=str(nxt or ""))
    svc = service(request)
    try:
        user = await anyio.to_thread.run_sync(svc.verify_password, username, password)
    except CoordinatorError as err:
        if err.reason != "login_failed":
            raise
        return _login_form(request, error=str(err), status=401, nxt=str(nxt or ""))
    store = _store(request)
    store.end(request.cookies.get(SESSION_COOKIE))  # no session fixation: always a new token
    token = store.create(user)
    response = RedirectResponse(_safe_next(nxt), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(store.ttl_s),
        path=PREFIX,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(
        LOGIN_COOKIE, path=f"{PREFIX}/login", secure=_secure(request), httponly=True, samesite="strict"
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session and forget the cookie."""
    await post_form(request)
    _store(request).end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse(f"{PREFIX}/login?done=logged_out", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, secure=_secure(request), httponly=True, samesite="strict"
    )
    return response


def login_redirect(request: Request) -> Response:
    """Where a request without a session goes: the login page, then back (GET) to where it was."""
    target = f"{PREFIX}/login"
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(here, safe="/")
    return RedirectResponse(target, status_code=303)
