"""Fixtures for the coordinator's tests.

A real coordinator: ``jip coordinator serve`` in a subprocess on a free loopback port
with its own data folder (see :class:`tests.coordinator._helpers.CoordinatorProcess`),
stopped by PID.  Tests share one, and stay out of each other's way by enrolling their
own sites; a module that needs other settings (short leases) or kills the process
overrides both fixtures with module-scoped ones of its own.

- ``coordinator``: a started coordinator (lease 30 s, 3 attempts), once per session.
- ``world``: on ``coordinator``, users with roles, a study ``lung`` (quorum 2) and an
  approved notebook version; ``world.new_sites(n)`` enrols fresh sites for a test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coordinator._helpers import (
    CoordinatorProcess,
    World,
    running_coordinator,
    world_on,
)


@pytest.fixture(scope="session")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    """A real coordinator process, started once per session."""
    with running_coordinator(tmp_path_factory.mktemp("coordinator"), lease_s=30.0, max_attempts=3) as coord:
        yield coord


@pytest.fixture(scope="session")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    """Users, roles, a study and an approved version on ``coordinator``."""
    with world_on(coordinator) as w:
        yield w
