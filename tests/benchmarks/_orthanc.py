"""A real Orthanc for the benchmarks, through the test suite's own launcher.

:mod:`tests.fixtures.orthanc` starts Orthanc (DICOMweb plugin, free loopback ports,
generated credentials) for pytest; its helpers work outside pytest as well.  Here
it is wrapped in a context manager that stops the server by its PID at the end and
turns "Orthanc is not installed" into :class:`OrthancUnavailable`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures import orthanc as fixture

__all__ = ["OrthancUnavailable", "running_orthanc"]


class OrthancUnavailable(Exception):
    """Orthanc or its DICOMweb plugin is not installed here."""


@contextmanager
def running_orthanc(workdir: Path) -> Iterator[fixture.OrthancServer]:
    """An Orthanc started in ``workdir`` (its password in ``$PASSWORD_ENV``), stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        server = fixture._start(workdir)
    except pytest.skip.Exception as err:  # the launcher skips where Orthanc is missing
        raise OrthancUnavailable(str(err.msg)) from None
    previous = os.environ.get(fixture.PASSWORD_ENV)
    os.environ[fixture.PASSWORD_ENV] = server.password
    try:
        yield server
    finally:
        fixture._stop(server.process)
        if previous is None:
            os.environ.pop(fixture.PASSWORD_ENV, None)
        else:
            os.environ[fixture.PASSWORD_ENV] = previous
