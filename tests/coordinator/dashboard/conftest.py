"""Fixtures for the dashboard's tests.

- ``dash`` (session): a coordinator process of its own (so that the roles the tests
  use show nowhere else) with the world of ``tests/coordinator/_helpers.build_world``:
  users in their roles in study ``lung`` (quorum 2).
- ``browser`` (session): Debian's headless Chromium driven by Playwright; the tests
  that need it are skipped when ``/usr/bin/chromium`` is missing.
- ``artifacts`` (session): where the browser tests save their screenshots and the
  CSV they download: ``$JIP_TEST_ARTIFACTS/dashboard`` when that is set, else
  ``artifacts/dashboard`` in the repository (ignored by git).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.coordinator._helpers import ROOT, running_coordinator, world_on
from tests.coordinator.dashboard._web import Dash

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Read at import: the autouse fixture of tests/conftest.py removes JIP_* variables per test.
ARTIFACTS = Path(os.environ.get("JIP_TEST_ARTIFACTS") or ROOT / "artifacts") / "dashboard"


@pytest.fixture(scope="session")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    """A coordinator process of the dashboard's tests alone (the users they log in as have
    no role anywhere else), with the world's users, study and sites."""
    with (
        running_coordinator(tmp_path_factory.mktemp("dashboard"), lease_s=30.0, max_attempts=3) as coord,
        world_on(coord, study="lung", quorum=2) as world,
    ):
        d = Dash(world, world.study)
        try:
            yield d
        finally:
            d.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); the browser tests need it"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
