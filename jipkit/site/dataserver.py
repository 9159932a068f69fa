"""The runner's side of a run's data channel: index queries and series reads over a socket.

A sandboxed kernel sees no index, no DICOM file and no configuration.  For each run the
runner serves its :class:`~jipkit.data.site.Site` on a Unix socket in the run's runtime
folder (shown to the kernel; the socket is the sandbox user's, mode 0600), and the
kernel's ``jip.connect()`` returns a :class:`~jipkit.data.remote.RemoteSite` that talks
to it.  The protocol is described in :mod:`jipkit.data.remote`.

What it answers, and nothing else:

- ``find_patients``, ``find_studies``, ``find_series``, ``find_instances`` on the index
  (never live PACS queries), without the ``location`` and ``source`` columns;
- ``load_series`` (with ``split_by``): the voxels and geometry, without file locations.
  One series is read at a time, whatever the number of connections.

No sync, no indexing, no configuration, no paths: error messages lose anything that
looks like an absolute path, and errors about files, PACS and the cache keep only their
kind.  The server records which SeriesInstanceUIDs the run read (:attr:`DataServer.series_read`),
for the result's provenance.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from jipkit.data.remote import (
    ERRORS,
    MAX_REQUEST_BYTES,
    OPERATIONS,
    PROTOCOL_VERSION,
    decode_keys,
    read_json,
    volume_dtype,
    write_frame,
    write_json,
)
from jipkit.errors import AmbiguousSeriesError, CacheError, DicomFileError, JipError, PACSError

if TYPE_CHECKING:
    import pandas as pd

    from jipkit.data.site import Site
    from jipkit.data.volume import Volume

__all__ = ["HIDDEN_COLUMNS", "DataServer"]

log = logging.getLogger("jipkit.site")

#: Columns of the index's answers that never reach a kernel: where files and series are.
HIDDEN_COLUMNS: Final = frozenset({"location", "source"})
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_NOT_KEYS: Final = frozenset({"live", "source", "ignore_case"})
_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"(),;:]+")
_UID_MAX: Final = 64


class _Refused(Exception):
    """A request that is not one the channel answers."""


def _scrub(message: str) -> str:
    """``message`` without absolute paths."""
    return _PATH.sub("<path>", message)


def _jsonable(value: Any) -> Any:
    """A value of a table cell or split key as JSON."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _table(df: pd.DataFrame) -> dict[str, Any]:
    import pandas as pd

    columns = [str(c) for c in df.columns if str(c) not in HIDDEN_COLUMNS]
    dtypes: list[str] = []
    data: list[list[Any]] = []
    for name in columns:
        col = df[name]
        kind = col.dtype.kind
        if kind in "iu":
            dtypes.append("int64")
            data.append([int(v) for v in col.tolist()])
        elif kind == "f":
            dtypes.append("float64")
            data.append([_jsonable(float(v)) for v in col.tolist()])
        elif kind == "b":
            dtypes.append("bool")
            data.append([bool(v) for v in col.tolist()])
        elif isinstance(col.dtype, pd.StringDtype):
            dtypes.append("str")
            data.append([_jsonable(v) for v in col.tolist()])
        else:
            dtypes.append("object")
            data.append([_jsonable(v) for v in col.tolist()])
    return {"kind": "table", "columns": columns, "dtypes": dtypes, "data": data}


def _volume_part(vol: Volume) -> tuple[dict[str, Any], np.ndarray[Any, Any]]:
    arr = np.ascontiguousarray(vol.array)
    volume_dtype(arr.dtype.str)  # booleans, integers and floats only
    step = vol._slice_step
    header = {
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
        "nbytes": int(arr.nbytes),
        "spacing": [float(v) for v in vol.spacing],
        "origin": np.asarray(vol.origin, dtype=float).tolist(),
        "direction": np.asarray(vol.direction, dtype=float).tolist(),
        "positions": np.asarray(vol.positions, dtype=float).tolist(),
        "slice_step": None if step is None else np.asarray(step, dtype=float).tolist(),
        "sop_instance_uids": [str(u) for u in vol.sop_instance_uids],
        "series_instance_uid": vol.series_instance_uid,
        "study_instance_uid": vol.study_instance_uid,
        "modality": vol.modality,
        "notes": [_scrub(str(n)) for n in vol.notes],
    }
    return header, arr


def _error(err: BaseException) -> dict[str, Any]:
    """The answer for a request that failed: a kind and a message that names no path."""
    answer: dict[str, Any] = {"v": PROTOCOL_VERSION, "ok": False, "attribute": None, "values": []}
    if isinstance(err, _Refused):
        answer.update(error="QueryError", message=str(err))
    elif isinstance(err, DicomFileError):
        answer.update(
            error="DicomFileError",
            message="A file of this series cannot be read as DICOM; the site's log has the details.",
        )
    elif isinstance(err, PACSError | CacheError):
        name = type(err).__name__ if type(err).__name__ in ERRORS else "PACSError"
        answer.update(
            error=name, message=f"The site could not retrieve this series ({name}); its log has the details."
        )
    elif isinstance(err, JipError):
        name = type(err).__name__ if type(err).__name__ in ERRORS else "JipError"
        answer.update(error=name, message=_scrub(str(err)))
        if isinstance(err, AmbiguousSeriesError):
            answer.update(attribute=err.attribute, values=[_jsonable(v) for v in err.values])
    else:
        answer.update(
            error="JipError", message="The site could not answer this request; its log has the details."
        )
    return answer


class DataServer:
    """Serve a site's index queries and series reads to one run's kernel.

    Parameters
    ----------
    site : Site
        The site's data, opened by the runner.
    path : Path
        Where to make the socket (in the run's runtime folder; at most 107 bytes).
    owner : (int, int), optional
        ``(uid, gid)`` to give the socket to (the sandbox user); default: the runner's.
    max_connections : int
        Connections served at once; more are closed at once.
    label : str
        The run, for log lines.

    Examples
    --------
    >>> with DataServer(site, runtime / "data.sock", owner=(uid, gid)) as server:  # doctest: +SKIP
    ...     run_the_kernel()
    ...     read = server.series_read
    """

    def __init__(
        self,
        site: Site,
        path: Path,
        *,
        owner: tuple[int, int] | None = None,
        max_connections: int = 8,
        label: str = "run",
    ):
        self.site, self.path, self.owner, self.label = site, path, owner, label
        self.max_connections = max_connections
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._load = threading.Semaphore(1)
        self._conns: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._read: dict[str, None] = {}
        self.requests = 0
        """Requests answered (successfully or not)."""

    def __enter__(self) -> DataServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def series_read(self) -> list[str]:
        """SeriesInstanceUIDs whose voxels the run read, in the order first read."""
        with self._lock:
            return list(self._read)

    def start(self) -> DataServer:
        """Make the socket and start serving (in a daemon thread)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            if self.owner is not None:
                os.chown(self.path, *self.owner)
            listener.listen(self.max_connections)
            listener.settimeout(0.2)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name=f"jip-data-{self.label}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: close the socket and every connection, and wait for the handlers."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            conns, handlers = list(self._conns), list(self._handlers)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in handlers:
            t.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        log.info("%s: data channel: %d requests, %d series read", self.label, self.requests, len(self._read))

    # -- serving ------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._closed.is_set():
                    log.exception("%s: the data channel stopped accepting", self.label)
                return
            conn.settimeout(None)
            with self._lock:
                if len(self._conns) >= self.max_connections:
                    conn.close()
                    continue
                self._conns.add(conn)
                t = threading.Thread(
                    target=self._serve, args=(conn,), name=f"jip-data-{self.label}-c", daemon=True
                )
                self._handlers = [h for h in self._handlers if h.is_alive()] + [t]
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                try:
                    request = read_json(conn, MAX_REQUEST_BYTES)
                except (ValueError, UnicodeDecodeError) as err:
                    with contextlib.suppress(OSError):
                        write_json(conn, _error(_Refused(f"Malformed request: {err}")))
                    return
                if request is None:
                    return
                self._answer(conn, request)
        except OSError:
            return  # the kernel went away, or the run ended
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, conn: socket.socket, request: Any) -> None:
        """Answer one request; only a failure to send (the kernel went away) raises."""
        t0 = time.monotonic()
        op = request.get("op") if isinstance(request, dict) else None
        with self._lock:
            self.requests += 1
        # One series in memory at a time, from reading it until it is sent.
        with self._load if op == "load_series" else contextlib.nullcontext():
            try:
                header, parts = self._compute(op, request)
            except Exception as err:  # the answer says what kind of failure, never where
                if not isinstance(err, JipError | _Refused):
                    log.error("%s: the data channel failed on %s", self.label, op, exc_info=err)
                else:
                    log.info("%s: data channel %s: %s", self.label, op, err)
                header, parts = _error(err), []
            write_json(conn, header)
            for arr in parts:
                write_frame(conn, arr.reshape(-1).view(np.uint8).data)
        log.debug("%s: data channel %s in %.3f s", self.label, op, time.monotonic() - t0)

    def _compute(self, op: Any, request: Any) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
        """The answer's header and raw parts for a request (raises for a refused or failed one)."""
        if not isinstance(request, dict) or request.get("v") != PROTOCOL_VERSION:
            raise _Refused(f"Expected a request of protocol version {PROTOCOL_VERSION}.")
        args = request.get("args")
        if op not in OPERATIONS or not isinstance(args, dict):
            raise _Refused(f"Expected an operation among {', '.join(OPERATIONS)}.")
        if op == "load_series":
            return self._load_series(args)
        return {"v": PROTOCOL_VERSION, "ok": True, **_table(self._find(op, args))}, []

    def _find(self, op: str, args: Mapping[str, Any]) -> pd.DataFrame:
        try:
            keys = decode_keys(args.get("keys", {}))
        except ValueError as err:
            raise _Refused(f"Malformed query keys: {err}") from err
        bad = [k for k in keys if k in _NOT_KEYS or not _KEYWORD.match(k)]
        if bad:
            raise _Refused(f"Expected DICOM keywords as query keys, found {bad[:5]}.")
        ignore_case = args.get("ignore_case", False)
        if not isinstance(ignore_case, bool):
            raise _Refused("Expected ignore_case to be true or false.")
        method = getattr(self.site, op)
        df: pd.DataFrame = method(live=False, source=None, ignore_case=ignore_case, **keys)
        return df

    def _load_series(self, args: Mapping[str, Any]) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
        uid, split_by = args.get("series_uid"), args.get("split_by")
        if not isinstance(uid, str) or not 0 < len(uid) <= _UID_MAX:
            raise _Refused("Expected a SeriesInstanceUID (text of at most 64 characters).")
        if split_by is not None and (not isinstance(split_by, str) or not _KEYWORD.match(split_by)):
            raise _Refused("Expected split_by to be a DICOM keyword, or null.")
        if split_by is None:
            header, arr = _volume_part(self.site.load_series(uid))
            parts = [arr]
            answer: dict[str, Any] = {"kind": "volume", "volume": header}
        else:
            vols = self.site.load_series(uid, split_by=split_by)
            made = [_volume_part(v) for v in vols.values()]
            parts = [arr for _, arr in made]
            answer = {
                "kind": "volumes",
                "keys": [_jsonable(k) for k in vols],
                "volumes": [h for h, _ in made],
            }
        with self._lock:
            self._read.setdefault(uid, None)
        return {"v": PROTOCOL_VERSION, "ok": True, **answer}, parts
