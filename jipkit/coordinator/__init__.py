"""The coordinator: studies, notebook versions and their reviews, signed job envelopes,
runs and jobs with leases, results from the sites and their aggregation.

::

    config.py     CoordinatorConfig: coordinator.toml + JIP_COORD_* variables
    db.py         Database: the SQLite file (WAL) and its schema
    audit.py      the append-only, hash-chained audit log and verify_chain()
    service.py    Service: every rule (roles, reviews, runs, leases, results); no HTTP,
                  one module per job: access.py (callers, roles, refusals), base.py,
                  accounts.py, studies.py, reviews.py, runs.py, leases.py, results.py
    aggregate.py  combine the sites' records: site x record frame, pooled figures
    app.py        create_app(config): the FastAPI service over Service
    client.py     CoordinatorClient: the user-side HTTP client
    cli.py        register(subparsers): ``jip coordinator ...``, ``jip notebook ...``,
                  ``jip run``, ``jip results``

The wire formats and the HTTP contract live in :mod:`jipkit.protocol`, shared with the
site runner; nothing here is imported by the site side.  Submodules are imported on
first use, so the client does not pull in FastAPI or SQLite.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CoordinatorClient", "CoordinatorConfig", "Service", "create_app", "load_coordinator_config"]

_WHERE = {
    "CoordinatorClient": "client",
    "CoordinatorConfig": "config",
    "load_coordinator_config": "config",
    "Service": "service",
    "create_app": "app",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
