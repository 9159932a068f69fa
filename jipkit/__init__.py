"""jipkit: JIP's toolkit for a site's DICOM data, for notebooks, the runner and the CLI.

>>> import jipkit as jip
>>> site = jip.connect()                                   # doctest: +SKIP
>>> ct = site.find_series(Modality="CT", StudyDate="2020")  # doctest: +SKIP
>>> vol = site.load_series(ct.SeriesInstanceUID.iloc[0])    # doctest: +SKIP
>>> vol.array.shape, vol.spacing, vol.affine                # doctest: +SKIP
"""

from __future__ import annotations

from jipkit.config import SiteConfig, load_config
from jipkit.data.site import Site, connect
from jipkit.data.volume import GeometryWarning, Volume
from jipkit.errors import (
    AmbiguousSeriesError,
    CacheError,
    ConfigError,
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
from jipkit.metrics import record

__version__ = "0.1.0"

__all__ = [
    "AmbiguousSeriesError",
    "CacheError",
    "ConfigError",
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

for _name in ("Site", "SiteConfig", "Volume", "connect", "load_config"):
    globals()[_name].__module__ = "jipkit"


def __dir__() -> list[str]:
    return sorted(__all__)
