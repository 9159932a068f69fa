"""Where DICOM data comes from: DICOMweb servers, DIMSE PACS and folders.

Every source implements :class:`Source`; :func:`open_source` builds the right one
from a source configuration.  The DICOMweb and DIMSE implementations are imported on
first use (pynetdicom takes a third of a second to import).

::

    from jipkit.data.sources import open_source
    src = open_source(site_config.source("pacs"))
    src.echo()
    rows = src.find("SERIES", {"Modality": "CT", "StudyDate": "2020-2021"}, ["SeriesDescription"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jipkit.config import DicomwebSourceConfig, DimseSourceConfig, FolderSourceConfig
from jipkit.data.sources.base import ConcurrencyLimit, Source
from jipkit.data.sources.folder import FolderSource
from jipkit.errors import ConfigError

if TYPE_CHECKING:
    from jipkit.data.sources.dicomweb import DicomwebSource
    from jipkit.data.sources.dimse import DimseSource

__all__ = [
    "ConcurrencyLimit",
    "DicomwebSource",
    "DimseSource",
    "FolderSource",
    "Source",
    "open_source",
]


def open_source(config: FolderSourceConfig | DicomwebSourceConfig | DimseSourceConfig) -> Source:
    """The data source for one ``[[sources]]`` entry of the site configuration.

    Parameters
    ----------
    config : FolderSourceConfig, DicomwebSourceConfig or DimseSourceConfig
        Chosen by its ``kind``: ``"folder"``, ``"dicomweb"`` or ``"dimse"``.

    Returns
    -------
    Source
        A :class:`FolderSource`, :class:`DicomwebSource` or :class:`DimseSource`.

    Raises
    ------
    ConfigError
        The kind is unknown, or a secret's environment variable is not set.
    """
    kind = getattr(config, "kind", None)
    if kind == "dicomweb" and isinstance(config, DicomwebSourceConfig):
        from jipkit.data.sources.dicomweb import DicomwebSource

        return DicomwebSource(config)
    if kind == "dimse" and isinstance(config, DimseSourceConfig):
        from jipkit.data.sources.dimse import DimseSource

        return DimseSource(config)
    if kind == "folder" and isinstance(config, FolderSourceConfig):
        return FolderSource(config)
    raise ConfigError(
        f"Unknown data source kind {kind!r}: expected 'dicomweb', 'dimse' or 'folder'. Fix kind "
        "in the site configuration."
    )


def __getattr__(name: str) -> Any:
    if name == "DicomwebSource":
        from jipkit.data.sources.dicomweb import DicomwebSource

        return DicomwebSource
    if name == "DimseSource":
        from jipkit.data.sources.dimse import DimseSource

        return DimseSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
