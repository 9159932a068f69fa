"""The interface every data source implements: DICOMweb, DIMSE and folders alike.

A source answers queries in DICOM's own terms and stores retrieved instances as
files; everything else (the index, the cache, volumes) is built on top of it.  The
interface is deliberately narrow and serialisable: query keys and values are plain
strings in DICOM matching syntax, results are lists of ``{keyword: value}`` dicts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from jipkit.data.schema import Level

__all__ = ["ConcurrencyLimit", "Source", "format_number", "is_uid"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (safe in a path or a URL)."""
    return len(value) <= 64 and _UID.match(value) is not None


def format_number(value: Any) -> str:
    """A number as DICOM text: integral values without a decimal point.

    Both PACS sources write multi-valued numbers this way, so their results compare equal.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


@runtime_checkable
class Source(Protocol):
    """A place DICOM data comes from.

    Values in results are Python scalars: ``str`` for text, dates (``YYYYMMDD``),
    times, UIDs and person names (the alphabetic ``^``-separated form, with ``=``
    groups kept); ``int``/``float`` for numbers; a ``\\``-joined string for
    multi-valued attributes.  A missing or empty attribute is absent or ``None``.
    """

    name: str

    def echo(self) -> None:
        """Check that the source answers (C-ECHO, or an HTTP request).

        Raises
        ------
        PACSUnavailableError, PACSTimeoutError, PACSAuthError
        """

    def find(self, level: Level, keys: Mapping[str, str], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Query at ``level`` with DICOM matching keys; return one dict per match.

        Each dict holds the matched keys, the requested ``fields`` the source could
        return, and the unique keys of every level above ``level`` (the parent UIDs).
        """

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Store every instance of a series as one file in the existing folder ``dest``.

        Files are named ``<SOPInstanceUID>.dcm`` and written completely before they
        get that name.  ``progress`` is called with the number of instances done so
        far.  Returns the paths written.
        """


class ConcurrencyLimit:
    """At most ``n`` requests open at once against one source, across threads.

    One instance per source configuration, shared by every client of that source in
    the process, so that parallel loads cannot overwhelm a production PACS.
    """

    _registry: ClassVar[dict[str, ConcurrencyLimit]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, n: int):
        self.n = n
        self._sem = threading.BoundedSemaphore(n)

    @classmethod
    def for_source(cls, key: str, n: int) -> ConcurrencyLimit:
        """The shared limit for the source identified by ``key``."""
        with cls._lock:
            lim = cls._registry.get(key)
            if lim is None or lim.n != n:
                lim = cls._registry[key] = cls(n)
            return lim

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``n`` request slots while the block runs."""
        with self._sem:
            yield
