"""The dashboard's HTML: Jinja2 templates (autoescape on everywhere), and its error pages.

Every value a template shows is escaped; the templates never mark content safe.  What
cannot be shown as escaped text (a notebook's rendering, a site's HTML output) is
served by :mod:`jipkit.coordinator.dashboard.render` into a sandboxed frame instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["FLASH", "PREFIX", "STATIC", "TEMPLATES", "error_page", "page"]

PREFIX: Final = "/ui"
"""Where the dashboard lives in the coordinator's URL space."""

HERE: Final = Path(__file__).resolve().parent
TEMPLATES: Final = HERE / "templates"
STATIC: Final = HERE / "static"

FLASH: Final = {
    "approve": "Your approval is recorded.",
    "reject": "Your rejection is recorded.",
    "submitted": "The notebook is submitted as a new version; it waits for review.",
    "existing": "This exact notebook is already a version of the study.",
    "started": "The run is started: each site's job is queued.",
    "cancelled": "The run is cancelled.",
    "logged_out": "You are logged out.",
}
"""Messages shown after an action, by the fixed code in ``?done=`` (never text from the URL)."""


def _short(value: object, n: int = 12) -> str:
    return "-" if value is None else str(value)[:n]


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = _short
    env.filters["number"] = _number
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=1, ensure_ascii=False, sort_keys=True)
    env.globals["prefix"] = PREFIX
    return env


_ENV: Final = _environment()


def page(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A dashboard page: ``template`` rendered with ``context`` and the session's user and CSRF token.

    The template sees ``session`` (None on the login page), ``flash`` (the message of a
    fixed ``?done=`` code) and ``path``.
    """
    session = getattr(request.state, "dashboard_session", None)
    flash = FLASH.get(request.query_params.get("done", ""))
    html = _ENV.get_template(template).render(session=session, flash=flash, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, detail: str, reason: str) -> HTMLResponse:
    """An error as a page: what failed, its reason code, and where to go from here."""
    return page(request, "error.html", status=status, status_code=status, detail=detail, reason=reason)
