"""The dashboard's browser-side defences: response headers, and the checks on every POST.

Headers (added by :class:`SecurityHeaders` to every response under the dashboard's prefix):

- pages: :data:`PAGE_CSP`: scripts, styles, frames and fetches from this origin only, no
  inline script or style, no plugin, no ``<base>``, not framed by anyone;
- untrusted content (notebooks, site outputs, plots; paths under ``/frames/`` and
  ``/plots/``): :data:`FRAME_CSP`: a CSP ``sandbox`` without ``allow-scripts`` and
  without ``allow-same-origin`` gives the document an opaque origin where no script
  runs, also when it is opened on its own rather than in its ``<iframe sandbox>``;
- everywhere: ``X-Content-Type-Options: nosniff``, ``Cache-Control: no-store`` (pages
  hold study data), ``X-Frame-Options``, and a ``Referrer-Policy``: ``no-referrer`` for
  untrusted content; ``same-origin`` for pages, so that no URL of the dashboard leaves it
  as a referrer, while the browser still sends ``Origin`` with the dashboard's own form
  posts (under ``no-referrer`` Chromium sends ``Origin: null``, which the Origin check
  must refuse).

POST checks (:func:`check_post`): the request's ``Origin`` (or, without one, its
``Referer``) must be this coordinator's, and the form's ``csrf`` field must be the
session's CSRF token (compared in constant time).  A sandboxed frame's requests carry
``Origin: null`` and fail the first check already.
"""

from __future__ import annotations

import hmac
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jipkit.coordinator.access import refused

__all__ = ["FRAME_CSP", "PAGE_CSP", "SecurityHeaders", "check_post", "origin_of"]

PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; frame-src 'self'; base-uri 'none'"
)
"""The Content-Security-Policy of the dashboard's own pages."""

FRAME_CSP: Final = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
"""The Content-Security-Policy of untrusted content: an opaque origin, no script, no request out."""

_COMMON: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def _untrusted(path: str) -> bool:
    return "/frames/" in path or "/plots/" in path


class SecurityHeaders:
    """ASGI middleware: the security headers on every response under ``prefix`` (others untouched).

    Parameters
    ----------
    app : ASGI application
    prefix : str
        The dashboard's path prefix (``/ui``).
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        untrusted = _untrusted(path[len(self.prefix) :])
        extra = [
            (b"content-security-policy", (FRAME_CSP if untrusted else PAGE_CSP).encode()),
            (b"x-frame-options", b"SAMEORIGIN" if untrusted else b"DENY"),
            (b"referrer-policy", b"no-referrer" if untrusted else b"same-origin"),
            *_COMMON,
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower case, default ports left out."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # a port out of range: an origin that matches nothing
        return f"{scheme}://{host}:invalid"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _allowed_origins(request: Request, public_url: str) -> set[str]:
    return {origin_of(public_url), origin_of(str(request.base_url))}


def check_origin(request: Request, public_url: str) -> None:
    """403 ``forbidden`` unless the request comes from a page of this coordinator.

    The ``Origin`` header decides (browsers send it with every POST); without it the
    ``Referer``; without either the request is refused.
    """
    allowed = _allowed_origins(request, public_url)
    origin = request.headers.get("origin")
    source = origin if origin is not None else request.headers.get("referer")
    if source is None or source == "null" or origin_of(source) not in allowed:
        raise refused(
            403,
            "forbidden",
            "This form was not sent from a page of this coordinator (Origin check). Reload the page "
            "and send it again.",
        )


def check_csrf(form: FormData, expected: str) -> None:
    """403 ``forbidden`` unless the form's ``csrf`` field is ``expected``."""
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise refused(
            403,
            "forbidden",
            "The form's CSRF token is missing or wrong (an old page, or a request from another site). "
            "Reload the page and send it again.",
        )


async def check_post(request: Request, public_url: str, expected_csrf: str) -> FormData:
    """The POSTed form, after the Origin and CSRF checks (403 ``forbidden`` when either fails)."""
    check_origin(request, public_url)
    form = await request.form()
    check_csrf(form, expected_csrf)
    return form
