"""jipkit: JIP's toolkit for a site's DICOM data, for notebooks, the runner and the CLI.

>>> import jipkit as jip
>>> site = jip.connect()                                   # doctest: +SKIP
>>> ct = site.find_series(Modality="CT", StudyDate="2020")  # doctest: +SKIP
>>> vol = site.load_series(ct.SeriesInstanceUID.iloc[0])    # doctest: +SKIP
>>> vol.array.shape, vol.spacing, vol.affine                # doctest: +SKIP

Coordinators and scientists reach the federation with :class:`Coordinator`:

>>> fed = jip.Coordinator("https://jip.example.org", token)  # doctest: +SKIP
>>> fed.run("lung", version, {"max_series": 20}).wait().pooled  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from jipkit.errors import (
    AmbiguousSeriesError,
    CacheError,
    ConfigError,
    CoordinatorError,
    DicomFileError,
    JipError,
    MixedSeriesError,
    NoPixelDataError,
    NotFoundError,
    PACSAuthError,
    PACSError,
    PACSProtocolError,
    PACSTimeoutError,
    PACSUnavailableError,
    QueryError,
    UnknownKeywordError,
    VolumeError,
)

if TYPE_CHECKING:
    from jipkit.config import SiteConfig, load_config
    from jipkit.data.site import Site, connect
    from jipkit.data.volume import GeometryWarning, Volume
    from jipkit.federation import Coordinator
    from jipkit.metrics import record

__version__ = "0.1.0"

#: Public names loaded on first use: ``import jipkit`` stays cheap (pandas, pydicom and
#: its decoders load only when a notebook first touches site data).
_LAZY = {
    "SiteConfig": "jipkit.config",
    "load_config": "jipkit.config",
    "Site": "jipkit.data.site",
    "connect": "jipkit.data.site",
    "GeometryWarning": "jipkit.data.volume",
    "Volume": "jipkit.data.volume",
    "record": "jipkit.metrics",
    "Coordinator": "jipkit.federation",
}

__all__ = [
    "AmbiguousSeriesError",
    "CacheError",
    "ConfigError",
    "Coordinator",
    "CoordinatorError",
    "DicomFileError",
    "GeometryWarning",
    "JipError",
    "MixedSeriesError",
    "NoPixelDataError",
    "NotFoundError",
    "PACSAuthError",
    "PACSError",
    "PACSProtocolError",
    "PACSTimeoutError",
    "PACSUnavailableError",
    "QueryError",
    "Site",
    "SiteConfig",
    "UnknownKeywordError",
    "Volume",
    "VolumeError",
    "connect",
    "load_config",
    "record",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jipkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    if name in ("Coordinator", "Site", "SiteConfig", "Volume", "connect", "load_config"):
        value.__module__ = "jipkit"  # tracebacks and ? show the public name
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
