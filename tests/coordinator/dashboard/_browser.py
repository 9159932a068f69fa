"""Helpers for the dashboard's browser tests (Playwright's sync API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.coordinator._helpers import PASSWORD
from tests.coordinator.dashboard._web import USERS


def shot(page: Any, path: Path) -> None:
    """A screenshot of the whole page, its sandboxed frames painted too.

    Chromium paints a frame of another origin (the sandboxed ones) only inside the
    viewport, so the viewport is made as tall as the page first.
    """
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(200)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def login(page: Any, base: str, role: str, shots: Path | None = None) -> None:
    """Log in through the form (the page may already be on the login form)."""
    if "/ui/login" not in page.url:
        page.goto(f"{base}/ui/login")
    page.fill("input[name=username]", USERS[role])
    page.fill("input[name=password]", PASSWORD)
    if shots is not None:
        page.screenshot(path=str(shots / "01-login.png"))
    page.click("button[type=submit]")
    page.wait_for_selector("#whoami")
