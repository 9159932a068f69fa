"""A folder of DICOM files (research exports) as a data source.

A folder is not queried file by file: ``jip index`` reads its headers once into the
site's index, and queries and loads go through the index, which reads the files in
place.  This source only checks that the folder is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jipkit.config import FolderSourceConfig
from jipkit.data.schema import Level
from jipkit.errors import ConfigError, QueryError

__all__ = ["FolderSource"]


class FolderSource:
    """A folder of DICOM files, indexed with ``jip index`` rather than queried live.

    Parameters
    ----------
    config : FolderSourceConfig
        The folder's path.
    """

    def __init__(self, config: FolderSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.path = Path(config.path)

    def __repr__(self) -> str:
        return f"FolderSource(name={self.name!r}, path={str(self.path)!r})"

    def echo(self) -> None:
        """Check that the folder exists and can be listed and read.

        Raises
        ------
        ConfigError
            The path does not exist, is not a folder, or is not readable by this
            process.  A folder source is part of the site's configuration, not a
            service that can be down, so the PACS errors do not apply; an unmounted
            share shows up here too, and the message says so.
        """
        where = f"The folder source {self.name!r} ({self.path})"
        if not self.path.exists():
            raise ConfigError(
                f"{where} does not exist. Fix path in the site configuration, or mount the "
                "share that holds it."
            )
        if not self.path.is_dir():
            raise ConfigError(f"{where} is not a folder. Point path at the folder of DICOM files.")
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise ConfigError(
                f"{where} cannot be read by this user. Grant read access to the folder, or run "
                "JIP as a user that has it."
            )

    def _not_live(self, what: str) -> NoReturn:
        raise QueryError(
            f"The folder source {self.name!r} cannot {what} live: folders are read through the "
            f"index. Run `jip index {self.path}` once, then query the "
            "index; its series load from the files in place."
        )

    def find(self, level: Level, keys: Mapping[str, str], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Not supported: folders are queried through the index.

        Raises
        ------
        QueryError
            Always; the message says to index the folder with ``jip index``.
        """
        self._not_live("be queried")

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Not supported: a folder's series are loaded in place, through the index.

        Raises
        ------
        QueryError
            Always; the message says to index the folder with ``jip index``.
        """
        self._not_live("retrieve series")
