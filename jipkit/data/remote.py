"""`RemoteSite`: the site's data API for a sandboxed kernel, over the runner's data socket.

A notebook run by the site's runner sees no index, no DICOM file and no configuration.
``jip.connect()`` finds the socket's path in ``$JIPKIT_DATA_SOCKET`` and returns a
:class:`RemoteSite`, whose ``find_patients``, ``find_studies``, ``find_series``,
``find_instances``, ``load_series`` and ``iter_series`` take the arguments of
:class:`jipkit.data.site.Site`'s and return the same DataFrames and volumes.  The
runner's side is :mod:`jipkit.site.dataserver`.

Protocol (version 1)
--------------------
A Unix stream socket.  Every message is a *frame*: an 8-byte big-endian unsigned length,
then that many bytes.  The client sends one request frame and reads one answer, then
may send the next request on the same connection.

Request: UTF-8 JSON, at most :data:`MAX_REQUEST_BYTES`::

    {"v": 1, "op": "find_series", "args": {"keys": {...}, "ignore_case": false}}
    {"v": 1, "op": "load_series", "args": {"series_uid": "1.2...", "split_by": null}}

``op`` is one of :data:`OPERATIONS`.  Key values are JSON: strings, numbers, null, lists
(any of several values), and tagged objects for what JSON lacks: ``{"tuple": [lo, hi]}``
(a numeric or date range), ``{"date": "2020-01-31"}``, ``{"datetime": "..."}``,
``{"time": "..."}``.

Answer: a JSON header frame, then raw frames when the header says so::

    {"v": 1, "ok": true, "kind": "table", "columns": [...], "dtypes": [...],
     "data": [[column 0 values], [column 1 values], ...]}    # dtypes: int64, float64,
                                                             # bool, str or object
    {"v": 1, "ok": true, "kind": "volume", "volume": {<volume header>}}     + 1 raw frame
    {"v": 1, "ok": true, "kind": "volumes", "keys": [k, ...],
     "volumes": [{<volume header>}, ...]}                                   + 1 raw frame each
    {"v": 1, "ok": false, "error": "NotFoundError", "message": "...",
     "attribute": null, "values": []}

A volume header holds ``dtype`` (a numpy type string: booleans, integers and floats
only), ``shape``, ``nbytes`` (the length of its raw frame: the array's bytes in C order),
``spacing``, ``origin``, ``direction``, ``positions``, ``slice_step``,
``sop_instance_uids``, ``series_instance_uid``, ``study_instance_uid``, ``modality`` and
``notes``.  No pickle anywhere; no paths or locations (tables have no ``location`` or
``source`` column, volumes no ``locations``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, overload

import numpy as np

from jipkit import errors
from jipkit.errors import JipError, QueryError

if TYPE_CHECKING:
    import pandas as pd

    from jipkit.data.volume import Volume

__all__ = [
    "DATA_SOCKET_ENV",
    "ERRORS",
    "MAX_REQUEST_BYTES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "ChannelError",
    "RemoteSite",
    "decode_keys",
    "encode_keys",
    "read_frame",
    "read_json",
    "volume_dtype",
    "write_frame",
    "write_json",
]

#: The environment variable that holds the data socket's path in a run's kernel.
DATA_SOCKET_ENV: Final = "JIPKIT_DATA_SOCKET"
PROTOCOL_VERSION: Final = 1
#: What a kernel may ask for.
OPERATIONS: Final = ("find_patients", "find_studies", "find_series", "find_instances", "load_series")
MAX_REQUEST_BYTES: Final = 1 << 20
#: The longest JSON answer a client accepts (a table of some millions of instances).
MAX_ANSWER_BYTES: Final = 4 << 30
_LEN = struct.Struct(">Q")
_DTYPE_KINDS: Final = frozenset("biuf")


class ChannelError(JipError):
    """The data channel to the site's runner failed or answered out of protocol."""

    reason = "data_channel"


# -- framing ------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return buf


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:], min(len(view) - got, 1 << 24))
        if k == 0:
            raise ConnectionError("the data channel closed mid-message")
        got += k


def write_frame(sock: socket.socket, payload: bytes | memoryview) -> None:
    """Send one frame: its length, then ``payload``."""
    view = memoryview(payload).cast("B")
    sock.sendall(_LEN.pack(len(view)))
    if len(view):
        sock.sendall(view)


def read_frame(sock: socket.socket, limit: int) -> bytes | None:
    """Read one frame of at most ``limit`` bytes; None when the peer closed cleanly first.

    Raises
    ------
    ValueError
        The frame is longer than ``limit``.
    ConnectionError
        The peer closed mid-frame.
    """
    head = bytearray(_LEN.size)
    got = 0
    while got < _LEN.size:
        k = sock.recv_into(memoryview(head)[got:])
        if k == 0:
            if got == 0:
                return None
            raise ConnectionError("the data channel closed mid-message")
        got += k
    (n,) = _LEN.unpack(head)
    if n > limit:
        raise ValueError(f"a frame of {n} bytes is longer than the {limit} allowed")
    return bytes(_recv_exact(sock, n))


def write_json(sock: socket.socket, value: Any) -> None:
    """Send one JSON frame (strict JSON: no NaN)."""
    write_frame(sock, json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def read_json(sock: socket.socket, limit: int) -> Any:
    """Read one JSON frame; None when the peer closed cleanly first."""
    data = read_frame(sock, limit)
    return None if data is None else json.loads(data.decode("utf-8"))


# -- values -------------------------------------------------------------------------------


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"Expected a finite number as a query value, found {value!r}.")
        return value
    if isinstance(value, np.generic):
        return _encode_value(value.item())
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"time": value.isoformat()}
    if isinstance(value, tuple):
        return {"tuple": [_encode_value(v) for v in value]}
    if isinstance(value, list | set | frozenset):
        return [_encode_value(v) for v in (sorted(value, key=str) if not isinstance(value, list) else value)]
    raise QueryError(
        f"A query value must be text, a number, a date, a list or a tuple; found {type(value).__name__}."
    )


def encode_keys(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Query keys as JSON values (see the module's protocol)."""
    return {str(k): _encode_value(v) for k, v in keys.items()}


def _decode_value(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        raise ValueError("query values nest too deeply")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list):
        return [_decode_value(v, depth + 1) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "tuple" and isinstance(inner, list):
            return tuple(_decode_value(v, depth + 1) for v in inner)
        if isinstance(inner, str):
            if tag == "date":
                return dt.date.fromisoformat(inner)
            if tag == "datetime":
                return dt.datetime.fromisoformat(inner)
            if tag == "time":
                return dt.time.fromisoformat(inner)
    raise ValueError(f"not a query value: {json.dumps(value)[:80]}")


def decode_keys(keys: Any) -> dict[str, Any]:
    """Query keys from their JSON form.

    Raises
    ------
    ValueError
        Not a mapping of names to query values.
    """
    if not isinstance(keys, dict) or len(keys) > 64:
        raise ValueError("expected at most 64 query keys")
    return {str(k): _decode_value(v) for k, v in keys.items()}


def volume_dtype(text: Any) -> np.dtype[Any]:
    """The numpy dtype a volume header names: booleans, integers and floats only.

    Raises
    ------
    ValueError
    """
    if not isinstance(text, str) or len(text) > 8:
        raise ValueError("expected a numpy type string")
    dtype = np.dtype(text)
    if dtype.kind not in _DTYPE_KINDS or dtype.hasobject or dtype.itemsize > 16:
        raise ValueError(f"not a volume type: {text}")
    return dtype


def _table(header: Mapping[str, Any]) -> pd.DataFrame:
    import pandas as pd

    columns, dtypes, data = header.get("columns"), header.get("dtypes"), header.get("data")
    if not (
        isinstance(columns, list)
        and isinstance(dtypes, list)
        and isinstance(data, list)
        and len(columns) == len(dtypes) == len(data)
    ):
        raise ChannelError("The site's runner sent a malformed table.")
    cols: dict[str, Any] = {}
    for name, kind, values in zip(columns, dtypes, data, strict=True):
        if not isinstance(values, list):
            raise ChannelError("The site's runner sent a malformed table.")
        if kind in ("int64", "float64", "bool", "str"):
            cols[str(name)] = pd.Series(
                [math.nan if v is None else v for v in values] if kind == "float64" else values,
                dtype=kind,
            )
        else:
            cols[str(name)] = pd.Series(values, dtype=object)
    return pd.DataFrame(cols, columns=[str(c) for c in columns])


def _volume(header: Any, raw: bytes | bytearray) -> Volume:
    from jipkit.data.volume import Volume

    if not isinstance(header, dict):
        raise ChannelError("The site's runner sent a malformed volume.")
    try:
        dtype = volume_dtype(header["dtype"])
        shape = tuple(int(n) for n in header["shape"])
        if len(shape) > 4 or any(n < 0 for n in shape):
            raise ValueError("bad shape")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise ValueError("the pixel data does not fit the shape")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        step = header.get("slice_step")
        return Volume(
            array=array,
            spacing=tuple(float(v) for v in header["spacing"]),  # type: ignore[arg-type]
            origin=np.asarray(header["origin"], dtype=np.float64),
            direction=np.asarray(header["direction"], dtype=np.float64).reshape(3, 3),
            positions=np.asarray(header["positions"], dtype=np.float64).reshape(-1, 3),
            sop_instance_uids=[str(u) for u in header["sop_instance_uids"]],
            locations=[],
            series_instance_uid=str(header["series_instance_uid"]),
            study_instance_uid=str(header["study_instance_uid"]),
            modality=str(header["modality"]),
            notes=[str(n) for n in header["notes"]],
            _slice_step=None if step is None else np.asarray(step, dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ChannelError(f"The site's runner sent a malformed volume ({err}).") from err


#: The errors an answer may name, by class name (a message is their only argument, but
#: for AmbiguousSeriesError's attribute and values).
ERRORS: Final[dict[str, type[JipError]]] = {
    cls.__name__: cls
    for cls in (
        errors.JipError,
        errors.QueryError,
        errors.UnknownKeywordError,
        errors.NotFoundError,
        errors.DicomFileError,
        errors.VolumeError,
        errors.NoPixelDataError,
        errors.MixedSeriesError,
        errors.AmbiguousSeriesError,
        errors.PACSError,
        errors.PACSUnavailableError,
        errors.PACSTimeoutError,
        errors.PACSAuthError,
        errors.PACSProtocolError,
        errors.CacheError,
    )
}


def _raise_answer(header: Mapping[str, Any]) -> None:
    name, message = header.get("error"), str(header.get("message") or "The site refused the request.")
    cls = ERRORS.get(name) if isinstance(name, str) else None
    if cls is errors.AmbiguousSeriesError:
        attribute, values = header.get("attribute"), header.get("values")
        raise errors.AmbiguousSeriesError(
            message,
            attribute=attribute if isinstance(attribute, str) else None,
            values=values if isinstance(values, list) else None,
        )
    raise (cls or JipError)(message)


# -- the client ---------------------------------------------------------------------------


class RemoteSite:
    """This site's data, as a run's kernel sees it: index queries and series reads.

    Get one with ``jip.connect()`` in a notebook the site's runner runs.  The methods
    take the arguments of :class:`jipkit.data.site.Site`'s; live PACS queries, indexing,
    sync, ``lazy_series`` and file paths are not available.  Thread-safe (one request at
    a time).

    Parameters
    ----------
    path : str or path-like
        The data socket (``$JIPKIT_DATA_SOCKET``).
    timeout : float, optional
        Seconds to wait for an answer (default: no limit; the run's deadline applies).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = None):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<jip.RemoteSite: this site's data, through the runner's data channel>"

    def __enter__(self) -> RemoteSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(
            f"{name!r} is not available to a notebook run by the site's runner: it can call "
            "find_patients, find_studies, find_series, find_instances, load_series and iter_series."
        )

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # -- transport ----------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as err:
            sock.close()
            raise ChannelError(
                f"Cannot reach the site's data channel ({err.strerror or err}): is this notebook "
                "run by the site's runner?"
            ) from err
        return sock

    def _request(self, op: str, args: Mapping[str, Any]) -> tuple[dict[str, Any], socket.socket]:
        """Send a request; the answer's header, and the socket to read raw frames from."""
        body = {"v": PROTOCOL_VERSION, "op": op, "args": dict(args)}
        for attempt in (0, 1):  # a connection the runner closed (idle) is opened again once
            if self._sock is None:
                self._sock = self._connect()
            try:
                write_json(self._sock, body)
                header = read_json(self._sock, MAX_ANSWER_BYTES)
                if header is None:
                    raise ConnectionError("the data channel closed")
            except (ConnectionError, BrokenPipeError) as err:
                self._sock.close()
                self._sock = None
                if attempt:
                    raise ChannelError(f"The site's data channel failed: {err}") from err
                continue
            except (OSError, ValueError) as err:
                self._sock.close()
                self._sock = None
                raise ChannelError(f"The site's data channel failed: {err}") from err
            if not isinstance(header, dict) or header.get("v") != PROTOCOL_VERSION:
                raise ChannelError("The site's runner answered out of protocol.")
            if not header.get("ok"):
                _raise_answer(header)
            return header, self._sock
        raise AssertionError("unreachable")

    def _raw(self, sock: socket.socket, nbytes: Any) -> bytearray:
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ChannelError("The site's runner sent a malformed volume.")
        head = _recv_exact(sock, _LEN.size)
        (n,) = _LEN.unpack(head)
        if n != nbytes:
            raise ChannelError("The site's runner sent pixel data of the wrong length.")
        buf = bytearray(n)
        _recv_into(sock, memoryview(buf))
        return buf

    # -- queries ------------------------------------------------------------------------

    def _find(
        self, op: str, live: bool, source: str | None, ignore_case: bool, keys: Mapping[str, Any]
    ) -> pd.DataFrame:
        if live or source is not None:
            raise QueryError(
                "Live PACS queries are not available to a notebook run by the site's runner: "
                "query the site's index (leave out live= and source=)."
            )
        with self._lock:
            header, _ = self._request(op, {"keys": encode_keys(keys), "ignore_case": bool(ignore_case)})
        if header.get("kind") != "table":
            raise ChannelError("The site's runner answered out of protocol.")
        return _table(header)

    def find_patients(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Patients matching ``keys`` (see :meth:`jipkit.data.site.Site.find_patients`)."""
        return self._find("find_patients", live, source, ignore_case, keys)

    def find_studies(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Studies matching ``keys`` (see :meth:`jipkit.data.site.Site.find_studies`)."""
        return self._find("find_studies", live, source, ignore_case, keys)

    def find_series(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Series matching ``keys`` (see :meth:`jipkit.data.site.Site.find_series`)."""
        return self._find("find_series", live, source, ignore_case, keys)

    def find_instances(
        self, *, live: bool = False, source: str | None = None, ignore_case: bool = False, **keys: Any
    ) -> pd.DataFrame:
        """Instances matching ``keys`` (see :meth:`jipkit.data.site.Site.find_instances`)."""
        return self._find("find_instances", live, source, ignore_case, keys)

    # -- loading ------------------------------------------------------------------------

    @overload
    def load_series(self, series_uid: str, *, split_by: None = None) -> Volume: ...
    @overload
    def load_series(self, series_uid: str, *, split_by: str) -> dict[Any, Volume]: ...

    def load_series(self, series_uid: str, *, split_by: str | None = None) -> Volume | dict[Any, Volume]:
        """Load a series as a :class:`~jipkit.data.volume.Volume` (see :meth:`jipkit.data.site.Site.load_series`).

        The volume has no ``locations`` (and so no ``headers``): files stay at the site.
        """
        if not isinstance(series_uid, str):
            raise QueryError(f"Expected a SeriesInstanceUID as text, found {type(series_uid).__name__}.")
        with self._lock:
            header, sock = self._request("load_series", {"series_uid": series_uid, "split_by": split_by})
            try:
                if header.get("kind") == "volume":
                    vol = header.get("volume")
                    raw = self._raw(sock, vol.get("nbytes") if isinstance(vol, dict) else None)
                    return _volume(vol, raw)
                if header.get("kind") == "volumes" and split_by is not None:
                    keys, vols = header.get("keys"), header.get("volumes")
                    if not (isinstance(keys, list) and isinstance(vols, list) and len(keys) == len(vols)):
                        raise ChannelError("The site's runner sent malformed volumes.")
                    out: dict[Any, Volume] = {}
                    for key, vol in zip(keys, vols, strict=True):
                        raw = self._raw(sock, vol.get("nbytes") if isinstance(vol, dict) else None)
                        out[tuple(key) if isinstance(key, list) else key] = _volume(vol, raw)
                    return out
            except (ChannelError, OSError):
                self._sock = None
                sock.close()
                raise
            raise ChannelError("The site's runner answered out of protocol.")

    def iter_series(
        self, series: pd.DataFrame | Iterable[str], *, progress: bool = True
    ) -> Iterator[tuple[str, Volume]]:
        """Load series one after the other: yields ``(SeriesInstanceUID, Volume)``."""
        import pandas as pd

        from jipkit.progress import tqdm

        uids = list(series["SeriesInstanceUID"]) if isinstance(series, pd.DataFrame) else list(series)
        for uid in tqdm(uids, desc="loading", unit="series", disable=not progress):
            yield uid, self.load_series(uid)
