"""The site runner: pull signed jobs from a coordinator, verify them, run them, report back.

A hospital's runner makes outbound connections only.  For each job it

1. verifies the coordinator's envelope (:mod:`jipkit.site.verify`): signature against
   pinned keys, site, expiry, notebook hash, replay, parameters, the site's policy;
2. runs the canonical notebook headless in the site's JIP kernel
   (:mod:`jipkit.site.execute`) with a wall-clock watchdog;
3. signs a result holding only output cells and typed records, and uploads it until the
   coordinator acknowledges it (:mod:`jipkit.site.runner`, over the HTTP client in
   :mod:`jipkit.site.client`).

Results the site's policy holds wait for a data steward's release
(:mod:`jipkit.site.release`, ``jip site release``); every result carries its provenance
(:mod:`jipkit.site.provenance`: version, parameters, kernel environment, a salted data
manifest, the site audit log's new entries) under the site's signature.

Its local state (replay protection, local approvals, the release queue, the salts of
the data manifests, the hash-chained site audit log) lives in SQLite
(:mod:`jipkit.site.state`); its configuration is the ``[federation]`` table of the
site's TOML file (:mod:`jipkit.site.fedconfig`).

This package is imported by :mod:`jipkit.config` (for :class:`FederationConfig`), so it
imports nothing eagerly: the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FederationConfig", "Runner", "RunnerState", "SitePolicy", "check_envelope", "run_notebook"]

_LAZY = {
    "FederationConfig": "jipkit.site.fedconfig",
    "SitePolicy": "jipkit.site.fedconfig",
    "Runner": "jipkit.site.runner",
    "RunnerState": "jipkit.site.state",
    "check_envelope": "jipkit.site.verify",
    "run_notebook": "jipkit.site.execute",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jipkit.site' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
