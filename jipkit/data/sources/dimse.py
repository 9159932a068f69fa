"""A PACS spoken to with DIMSE (C-ECHO, C-FIND, C-GET) through pynetdicom.

Queries follow the Study Root hierarchy as strict PACS require (PS3.4 C.4.1.2.2): a
SERIES-level C-FIND carries one StudyInstanceUID, an IMAGE-level one a
StudyInstanceUID and a SeriesInstanceUID.  :meth:`DimseSource.find` therefore walks
down from STUDY: keys and fields of the upper levels go into the upper query, each
answer's UIDs into the queries one level down, and the upper answers' attributes
are merged into the rows below.  All the queries of one :meth:`~DimseSource.find`
share one association.  PATIENT-level queries use the Patient Root model.

Series are retrieved with C-GET on one association that offers, for each SOP class
the series holds (asked first with an IMAGE-level C-FIND), a presentation context
per transfer syntax, so that instances arrive as stored; each is written as received
(``<SOPInstanceUID>.dcm.part``, then renamed).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from ssl import SSLContext
from typing import Any, Final, NoReturn, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import PersonName
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import AddressInformation, AssociationSocket

from jipkit.config import DimseSourceConfig
from jipkit.data.schema import LEVELS, UNIQUE_KEY, Level, level_of
from jipkit.data.sources.base import ConcurrencyLimit, format_number, is_uid
from jipkit.errors import (
    CacheError,
    NotFoundError,
    PACSAuthError,
    PACSProtocolError,
    PACSTimeoutError,
    PACSUnavailableError,
    QueryError,
    UnknownKeywordError,
)

__all__ = ["STORAGE_TRANSFER_SYNTAXES", "DimseSource", "element_value"]

_log = logging.getLogger(__name__)

#: Transfer syntaxes offered for each SOP class during C-GET, one presentation context
#: each after the first (both uncompressed ones), so the PACS can send as stored.
STORAGE_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
_MAX_CONTEXTS: Final = 128
_INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
_FLOAT_VRS = frozenset({"DS", "FD", "FL"})
_BINARY_NUMBER_VRS = frozenset({"SL", "SS", "SV", "UL", "US", "UV", "FD", "FL"})
_RANK: Final[dict[str, int]] = {lv: i for i, lv in enumerate(LEVELS)}
_PARENT: Final[dict[str, Level]] = {"SERIES": "STUDY", "IMAGE": "SERIES"}
_PENDING = (0xFF00, 0xFF01)

# Reasons an association is rejected (PS3.8 9.3.4), by (source, diagnostic)
_REJECT_REASONS: Final[dict[tuple[int, int], str]] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def _vr(keyword: str) -> str:
    try:
        return str(dictionary_VR(keyword)).split(" or ")[0]
    except KeyError as err:
        raise UnknownKeywordError(
            f"{keyword!r} is not a DICOM keyword. Query keys and fields are DICOM keywords "
            "written as in the standard, e.g. Modality, StudyDate, SeriesInstanceUID."
        ) from err


def _element(keyword: str, value: str | None) -> DataElement:
    """A C-FIND identifier element: ``None`` or ``""`` asks for the value (universal match)."""
    tag = tag_for_keyword(keyword)
    vr = _vr(keyword)
    if tag is None:  # pragma: no cover - _vr already checked
        raise UnknownKeywordError(f"{keyword!r} is not a DICOM keyword.")
    if value is None or str(value) == "":
        return DataElement(tag, vr, None)
    text = str(value)
    if vr in _BINARY_NUMBER_VRS:
        try:
            number: int | float = float(text) if vr in ("FD", "FL") else int(text)
        except ValueError as err:
            raise QueryError(
                f"{keyword} takes a single number in a DIMSE query, found {text!r} "
                "(ranges and wildcards are not allowed for binary numbers)."
            ) from err
        return DataElement(tag, vr, number)
    if vr == "SQ":
        raise QueryError(f"{keyword} is a sequence: it cannot be matched in a DIMSE query.")
    return DataElement(tag, vr, text)


def element_value(elem: DataElement | None) -> Any:
    """Convert a pydicom element from a C-FIND answer to a Python scalar.

    Parameters
    ----------
    elem : pydicom.dataelem.DataElement or None

    Returns
    -------
    str, int, float or None
        ``str`` for text, dates, times, UIDs and person names (``=`` groups kept);
        ``int``/``float`` for single numbers (IS, DS, US, FD...); a ``\\``-joined
        string for several values; None when absent, empty, a sequence or binary.
    """
    if elem is None or elem.VR == "SQ":
        return None
    value = elem.value
    if value is None or value == "" or isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, MultiValue | list | tuple):
        if len(value) == 0:
            return None
        if len(value) > 1:
            if elem.VR in _INT_VRS or elem.VR in _FLOAT_VRS:
                # as DICOM JSON carries them, so DIMSE and DICOMweb sources agree
                return "\\".join("" if v in (None, "") else format_number(v) for v in value)
            return "\\".join("" if v is None else str(v) for v in value) or None
        value = value[0]
    if isinstance(value, PersonName):
        return str(value) or None
    if elem.VR in _INT_VRS:
        return int(value)
    if elem.VR in _FLOAT_VRS:
        return float(value)
    return str(value)


_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _Socket(AssociationSocket):
    """pynetdicom's socket, tuned for the many small messages of C-FIND and C-GET.

    - Nagle's algorithm off, and on Linux an immediate ACK after each read: PACS built
      on DCMTK (Orthanc, dcmqrscp) send a message as several small writes, each held
      back until our delayed ACK (40 ms) arrives.  Against Orthanc this makes a C-GET
      of 48 small instances 12 times faster (2.3 s to 0.19 s) and a C-FIND twice as
      fast.
    - The socket is closed even when ``shutdown()`` fails, as it does after a refused
      connection (pynetdicom's own ``_shutdown_socket`` then skips ``close()``).
    """

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        sock = self.socket
        if _QUICKACK is not None and sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data

    def _shutdown_socket(self) -> None:
        sock = self.socket
        if sock is None:
            return
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            sock.close()


class _AE(AE):
    """An AE whose associations use :class:`_Socket`."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: tuple[SSLContext, str] | None
    ) -> AssociationSocket:
        sock = _Socket(assoc, address=address)
        sock.tls_args = tls_args
        if sock.socket is not None:
            with suppress(OSError):
                sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _guard_responses(assoc: Association) -> None:
    """Keep the association's reactor thread from taking responses meant for us.

    pynetdicom pauses its reactor while an operation waits for responses, but the
    pause races with the end of the previous operation: a reactor woken by that end
    can still take the next response off the queue, log "Received unexpected C-FIND
    service message" and drop it, losing a match without an error (pydicom/pynetdicom
    #875; about 2 in 100 queries on a loaded machine).  The reactor only serves
    requests, so it is refused responses: they wait for the thread that asked.
    """
    dimse = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            _, msg = dimse.peek_msg()
            if msg is not None and not msg.is_valid_request:
                return None, None
        return take(block)

    dimse.get_msg = get_msg  # type: ignore[method-assign]  # on this association only


class _Watch:
    """Association events, to tell a refused connection from a timeout or an abort."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.connected = False
        self.last_activity = self.started
        self.rejection: tuple[int, int, int] | None = None

    def on_open(self, event: evt.Event) -> None:
        self.connected = True
        self.last_activity = time.monotonic()

    def on_recv(self, event: evt.Event) -> None:
        self.last_activity = time.monotonic()

    def on_pdu(self, event: evt.Event) -> None:
        # A PACS that closes the connection right after its A-ASSOCIATE-RJ can make
        # pynetdicom report an abort instead of the rejection (it checks the socket
        # after the DUL thread has read the RJ and the close): keep the RJ here.
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.rejection = (int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0))

    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], None]]]:
        return [
            (evt.EVT_CONN_OPEN, self.on_open),
            (evt.EVT_DIMSE_RECV, self.on_recv),
            (evt.EVT_PDU_RECV, self.on_pdu),
        ]


class _Store:
    """The C-STORE handler of a C-GET: writes each instance as it arrives."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.written: dict[str, Path] = {}
        self.error: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, event: evt.Event) -> int:
        sop = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
        if not is_uid(sop):
            with self._lock:
                self.error = self.error or PACSProtocolError(
                    f"the PACS sent an instance with an invalid SOP Instance UID ({sop!r})"
                )
            return 0xC210  # cannot understand
        part = self.dest / f"{sop}.dcm.part"
        final = self.dest / f"{sop}.dcm"
        try:
            with part.open("wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
            os.replace(part, final)
        except OSError as err:
            part.unlink(missing_ok=True)
            with self._lock:
                self.error = self.error or CacheError(f"Cannot write {final}: {err.strerror}.")
            return 0xA700  # out of resources
        with self._lock:
            self.written[sop] = final
        return 0x0000


class DimseSource:
    """A PACS reached with DIMSE: C-ECHO, hierarchical C-FIND and C-GET.

    Parameters
    ----------
    config : DimseSourceConfig
        Host, port, called and calling AE titles, timeout and concurrency limit.  One
        association counts as one request against ``max_concurrent``.

    Examples
    --------
    >>> src = DimseSource(config)                            # doctest: +SKIP
    >>> src.find("SERIES", {"Modality": "CT"}, ["SeriesDescription"])  # doctest: +SKIP
    [{'PatientID': '...', 'StudyInstanceUID': '...', 'SeriesInstanceUID': '...', ...}]
    """

    def __init__(self, config: DimseSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self._address = f"{config.host}:{config.port}"
        self._limit = ConcurrencyLimit.for_source(
            f"dimse:{self._address}:{config.called_aet}", config.max_concurrent
        )

    def __repr__(self) -> str:
        c = self.config
        return f"DimseSource(name={self.name!r}, {c.called_aet}@{self._address}, calling {c.calling_aet})"

    # --- associations -------------------------------------------------------------

    def _where(self) -> str:
        c = self.config
        return f"DIMSE source {self.name!r} ({c.called_aet} at {self._address})"

    @contextmanager
    def _associate(
        self,
        contexts: Sequence[Any],
        what: str,
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    ) -> Iterator[tuple[Association, _Watch]]:
        """An established association, holding one concurrency slot; released after."""
        c = self.config
        with self._limit.slot():
            ae = _AE(ae_title=c.calling_aet)
            ae.connection_timeout = c.timeout
            ae.acse_timeout = c.timeout
            ae.dimse_timeout = c.timeout
            ae.network_timeout = c.timeout
            ae.maximum_pdu_size = 0  # no limit on what we receive
            ae.requested_contexts = list(contexts)
            watch = _Watch()
            assoc = ae.associate(
                c.host,
                c.port,
                ae_title=c.called_aet,
                ext_neg=list(roles) or None,
                evt_handlers=[*watch.handlers(), *handlers],
            )
            if not assoc.is_established:
                self._raise_not_established(assoc, watch, what)
            _guard_responses(assoc)
            try:
                yield assoc, watch
            except QueryError:
                # a refused query: the operation is over and the association sound
                if assoc.is_established:
                    assoc.release()
                raise
            except BaseException:
                if assoc.is_established:
                    assoc.abort()
                raise
            else:
                if assoc.is_established:
                    assoc.release()

    def _raise_not_established(self, assoc: Association, watch: _Watch, what: str) -> NoReturn:
        c = self.config
        where = self._where()
        elapsed = time.monotonic() - watch.started
        rsp = assoc.acceptor.primitive
        rejection = watch.rejection
        if assoc.is_rejected and rsp is not None:
            rejection = (int(rsp.result or 0), int(rsp.result_source or 0), int(rsp.diagnostic or 0))
        if rejection is not None:
            result, source, diag = rejection
            reason = _REJECT_REASONS.get((source, diag), f"source {source}, reason {diag}")
            if source == 3 or result == 2:
                raise PACSUnavailableError(
                    f"{what}: {where} rejected the association for now ({reason}). Try again "
                    "later, or lower max_concurrent in the source configuration."
                )
            if source == 2:
                raise PACSProtocolError(
                    f"{what}: {where} rejected the association ({reason}): it does not speak "
                    "the DICOM upper layer protocol as pynetdicom does. Check the port."
                )
            if (source, diag) == (1, 7):
                hint = f"Check called_aet ({c.called_aet!r}) in the source configuration"
            else:
                hint = (
                    f"Ask the PACS administrators to register the calling AE title "
                    f"{c.calling_aet!r} for this host, or fix calling_aet in the source "
                    "configuration"
                )
            raise PACSAuthError(f"{what}: {where} rejected the association ({reason}). {hint}.")
        if not watch.connected:
            if elapsed >= c.timeout * 0.9:
                raise PACSTimeoutError(
                    f"{what}: could not connect to {where} within {c.timeout:g} s. Check host "
                    "and port in the source configuration and that the PACS is reachable."
                )
            raise PACSUnavailableError(
                f"{what}: cannot connect to {where} (connection refused or unreachable). Check "
                "that the PACS is running and that host and port in the source configuration "
                "are right."
            )
        if rsp is not None and rsp.result == 0:
            raise PACSProtocolError(
                f"{what}: {where} accepted the association but none of the services asked for "
                "(presentation contexts). Check that the PACS supports this service for the "
                f"calling AE title {c.calling_aet!r}."
            )
        if elapsed >= c.timeout * 0.9:
            raise PACSTimeoutError(
                f"{what}: {where} did not answer the association request within "
                f"{c.timeout:g} s. Check that the port is a DICOM port, or raise timeout."
            )
        raise PACSUnavailableError(
            f"{what}: {where} closed the connection during association. Check that the port "
            "is the PACS's DICOM port (not HTTP) and that it accepts this host."
        )

    def _raise_lost(self, assoc: Association, watch: _Watch, what: str) -> NoReturn:
        """The association ended without a final answer (timeout, abort, bad message)."""
        idle = time.monotonic() - watch.last_activity
        if idle >= self.config.timeout * 0.9:
            raise PACSTimeoutError(
                f"{what}: {self._where()} did not answer within {self.config.timeout:g} s. "
                "Try again later, or raise timeout in the source configuration."
            )
        if assoc.is_aborted:
            raise PACSUnavailableError(
                f"{what}: {self._where()} aborted the association or closed the connection. "
                "Try again; if it persists, check the PACS's log."
            )
        raise PACSProtocolError(f"{what}: {self._where()} sent an answer that could not be decoded as DIMSE.")

    def echo(self) -> None:
        """Send a C-ECHO.

        Raises
        ------
        PACSUnavailableError
            Nothing listens at host:port, or the PACS closed the connection.
        PACSTimeoutError
            The PACS did not answer in time.
        PACSAuthError
            The PACS rejected our calling or called AE title.
        PACSProtocolError
            The answer is not a successful C-ECHO.
        """
        what = "C-ECHO"
        with self._associate([build_context(Verification)], what) as (assoc, watch):
            status = assoc.send_c_echo()
            if not status or "Status" not in status:
                self._raise_lost(assoc, watch, what)
            if status.Status != 0x0000:
                raise PACSProtocolError(
                    f"{what}: {self._where()} answered status 0x{status.Status:04X}, expected "
                    "0x0000 (success)."
                )

    # --- C-FIND -------------------------------------------------------------------

    def find(self, level: Level, keys: Mapping[str, str], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Query with C-FIND at ``level``, walking down the Study Root hierarchy.

        Parameters
        ----------
        level : {"PATIENT", "STUDY", "SERIES", "IMAGE"}
            PATIENT uses the Patient Root model; the others the Study Root model.
        keys : mapping
            DICOM keyword to value in DICOM matching syntax (``*``/``?`` wildcards,
            ``20200101-20201231`` ranges, ``\\``-separated UID lists).  Keys of upper
            levels (StudyDate at SERIES level) match in the upper query.
        fields : sequence of str
            Further keywords to return; those of upper levels come from the upper
            queries.

        Returns
        -------
        list of dict
            One dict per match with the same keys: the unique keys of the levels above
            ``level`` (PatientID, StudyInstanceUID, SeriesInstanceUID), that of
            ``level``, the query keys and the fields; None where the PACS returned no
            value.

        Notes
        -----
        A SERIES or IMAGE query without study keys queries every study first, then the
        series of each (one C-FIND per study): give study-level keys (StudyDate,
        PatientID, StudyInstanceUID) to keep it short.

        Raises
        ------
        UnknownKeywordError
            A key or field is not a DICOM keyword.
        QueryError
            ``level`` is unknown, a value cannot be encoded, or the PACS refused the
            query (status 0xA900 or 0xCxxx).
        PACSUnavailableError, PACSTimeoutError, PACSAuthError, PACSProtocolError
        """
        if level not in LEVELS:
            raise QueryError(f"Unknown query level {level!r}: expected one of {', '.join(LEVELS)}.")
        for k in (*keys, *fields):
            _vr(k)
        depth = LEVELS.index(level)
        wanted = list(dict.fromkeys([*(UNIQUE_KEY[lv] for lv in LEVELS[: depth + 1]), *keys, *fields]))
        model = (
            PatientRootQueryRetrieveInformationModelFind
            if level == "PATIENT"
            else StudyRootQueryRetrieveInformationModelFind
        )
        with self._associate([build_context(model)], f"{level} C-FIND") as (assoc, watch):
            if level == "PATIENT":
                rows = self._c_find(assoc, watch, model, level, dict(keys), wanted)
            else:
                rows = self._walk(assoc, watch, level, dict(keys), list(fields))
        return [{k: row.get(k) for k in wanted} for row in rows]

    def _walk(
        self,
        assoc: Association,
        watch: _Watch,
        level: Level,
        keys: dict[str, str],
        fields: list[str],
    ) -> list[dict[str, Any]]:
        """Rows at ``level`` (STUDY, SERIES or IMAGE), querying the parents first."""
        model = StudyRootQueryRetrieveInformationModelFind
        if level == "STUDY":
            wanted = ["PatientID", "StudyInstanceUID", *keys, *fields]
            return self._c_find(assoc, watch, model, level, keys, wanted)

        def rank(keyword: str) -> int:
            lv = level_of(keyword)
            return _RANK[lv] if lv is not None else _RANK[level]

        up_keys = {k: v for k, v in keys.items() if rank(k) < _RANK[level]}
        own_keys = {k: v for k, v in keys.items() if rank(k) >= _RANK[level]}
        up_fields = [f for f in fields if rank(f) < _RANK[level]]
        own_fields = [f for f in fields if rank(f) >= _RANK[level]]
        parent = _PARENT[level]
        parents = self._walk(assoc, watch, parent, up_keys, up_fields)
        uid_keys = [UNIQUE_KEY[lv] for lv in LEVELS[_RANK["STUDY"] : _RANK[level]]]
        wanted = [*uid_keys, UNIQUE_KEY[level], *own_keys, *own_fields]
        rows: list[dict[str, Any]] = []
        for p in parents:
            ident = dict(own_keys)
            for k in uid_keys:
                uid = p.get(k)
                if not isinstance(uid, str) or not is_uid(uid):
                    raise PACSProtocolError(
                        f"{parent} C-FIND: {self._where()} returned a match without a valid "
                        f"{k} ({uid!r}), which the query one level down needs."
                    )
                ident[k] = uid
            for row in self._c_find(assoc, watch, model, level, ident, wanted):
                rows.append({**p, **{k: v for k, v in row.items() if v is not None or k not in p}})
        return rows

    def _c_find(
        self,
        assoc: Association,
        watch: _Watch,
        model: UID,
        level: Level,
        keys: Mapping[str, str],
        wanted: Sequence[str],
    ) -> list[dict[str, Any]]:
        """One C-FIND; one dict per match, with every keyword of ``wanted``."""
        what = f"{level} C-FIND"
        ds = Dataset()
        ds.QueryRetrieveLevel = "PATIENT" if level == "PATIENT" else level
        wanted = list(dict.fromkeys([*wanted, *keys]))
        for k in wanted:
            ds.add(_element(k, keys.get(k)))
        if any(not str(v).isascii() for v in keys.values() if v is not None):
            ds.SpecificCharacterSet = "ISO_IR 192"
        rows: list[dict[str, Any]] = []
        for status, identifier in assoc.send_c_find(ds, model):
            if not status or "Status" not in status:
                self._raise_lost(assoc, watch, what)
            code = int(status.Status)
            if code in _PENDING:
                if identifier is None:
                    raise PACSProtocolError(
                        f"{what}: {self._where()} sent a match that could not be decoded."
                    )
                rows.append({k: self._value(identifier, k, what) for k in wanted})
                continue
            if code == 0x0000:
                return rows
            self._raise_status(code, status, what)
        self._raise_lost(assoc, watch, what)

    def _value(self, identifier: Dataset, keyword: str, what: str) -> Any:
        """One attribute of a match; None (and a logged warning) when it is not valid."""
        try:
            return element_value(identifier.data_element(keyword))
        except (TypeError, ValueError, LookupError, AttributeError):
            # e.g. a DS whose backslashes a PACS turned into yen signs (ISO 2022 IR 13)
            _log.warning(
                "%s: %s sent a value of %s that is not valid for its VR; it is returned as None",
                what,
                self._where(),
                keyword,
            )
            return None

    def _raise_status(self, code: int, status: Dataset, what: str) -> NoReturn:
        comment = status.get("ErrorComment")
        detail = f" ({comment})" if comment else ""
        where = self._where()
        if code in (0xA700, 0xA701, 0xA702):
            raise PACSUnavailableError(
                f"{what}: {where} is out of resources (status 0x{code:04X}){detail}. Try again "
                "later, or lower max_concurrent in the source configuration."
            )
        if code == 0x0124 or code == 0xA801:
            raise PACSAuthError(
                f"{what}: {where} refused the request (status 0x{code:04X}){detail}. Ask the "
                f"PACS administrators to allow it for the AE title {self.config.calling_aet!r}."
            )
        if code == 0xA900 or 0xC000 <= code <= 0xCFFF:
            raise QueryError(
                f"{what}: {where} refused the query (status 0x{code:04X}: "
                f"{'identifier does not match SOP class' if code == 0xA900 else 'unable to process'})"
                f"{detail}. Check the keys and their values."
            )
        if code == 0xFE00:
            raise PACSUnavailableError(f"{what}: {where} cancelled the request (status 0xFE00).")
        raise PACSProtocolError(f"{what}: {where} answered status 0x{code:04X}{detail}.")

    # --- C-GET --------------------------------------------------------------------

    def retrieve_series(
        self,
        study_uid: str,
        series_uid: str,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Store every instance of a series in ``dest`` with C-GET.

        First lists the series' instances and SOP classes (IMAGE-level C-FIND), then
        sends one C-GET on an association offering those SOP classes in the transfer
        syntaxes of :data:`STORAGE_TRANSFER_SYNTAXES` (at most 128 presentation
        contexts), with the SCP role for storage.  Each instance is written as
        received, meta header included, to ``<SOPInstanceUID>.dcm.part`` and renamed
        to ``<SOPInstanceUID>.dcm``.

        Parameters
        ----------
        study_uid, series_uid : str
            The series to retrieve.
        dest : Path
            An existing folder.
        progress : callable, optional
            Called in this thread with the number of instances stored so far.

        Returns
        -------
        list of Path
            The files written, in the order the PACS listed the instances.

        Notes
        -----
        ``timeout`` bounds the wait for each DIMSE message, and the PACS answers the
        C-GET once per instance: one instance must arrive within ``timeout`` (raise it
        for very large multi-frame instances on slow links).

        Raises
        ------
        NotFoundError
            The PACS holds no instance of that series.
        QueryError
            ``study_uid`` or ``series_uid`` is not a UID.
        CacheError
            ``dest`` is not a folder or cannot be written.
        PACSUnavailableError, PACSTimeoutError, PACSAuthError, PACSProtocolError
            No ``.part`` file is left behind.
        """
        for label, uid in (("study", study_uid), ("series", series_uid)):
            if not is_uid(uid):
                raise QueryError(f"{uid!r} is not a valid {label} instance UID.")
        dest = Path(dest)
        if not dest.is_dir():
            raise CacheError(f"Cannot store series {series_uid}: {dest} is not a folder.")
        model = StudyRootQueryRetrieveInformationModelFind
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        with self._associate([build_context(model)], "IMAGE C-FIND") as (assoc, watch):
            listed = self._c_find(assoc, watch, model, "IMAGE", keys, ["SOPInstanceUID", "SOPClassUID"])
        sops = list(dict.fromkeys(str(r["SOPInstanceUID"]) for r in listed if r["SOPInstanceUID"]))
        if not sops:
            raise NotFoundError(
                f"{self._where()} holds no instance of series {series_uid} in study {study_uid}. "
                "Check the UIDs (query the series first)."
            )
        sop_classes = sorted({str(r["SOPClassUID"]) for r in listed if r["SOPClassUID"]})
        try:
            self._c_get(study_uid, series_uid, sop_classes, dest, sops, progress)
        except BaseException:
            for sop in sops:
                (dest / f"{sop}.dcm.part").unlink(missing_ok=True)
            raise
        return [dest / f"{sop}.dcm" for sop in sops]

    def _c_get(
        self,
        study_uid: str,
        series_uid: str,
        sop_classes: list[str],
        dest: Path,
        sops: list[str],
        progress: Callable[[int], None] | None,
    ) -> None:
        what = f"C-GET of series {series_uid}"
        if not sop_classes:
            raise PACSProtocolError(
                f"{what}: {self._where()} did not return the SOPClassUID of the instances, "
                "which C-GET needs to offer storage contexts."
            )
        if len(sop_classes) > _MAX_CONTEXTS - 1:
            raise PACSProtocolError(
                f"{what}: the series holds {len(sop_classes)} SOP classes, more than one "
                f"association can offer ({_MAX_CONTEXTS - 1})."
            )
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        # each SOP class gets as many single-syntax contexts as fit in 128
        per_class = max(1, min(len(STORAGE_TRANSFER_SYNTAXES) - 1, (_MAX_CONTEXTS - 1) // len(sop_classes)))
        for sop_class in sop_classes:
            contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            for ts in STORAGE_TRANSFER_SYNTAXES[2 : per_class + 1]:
                contexts.append(build_context(sop_class, ts))
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        store = _Store(dest)
        ident = Dataset()
        ident.QueryRetrieveLevel = "SERIES"
        ident.StudyInstanceUID = study_uid
        ident.SeriesInstanceUID = series_uid
        handlers = [(evt.EVT_C_STORE, store)]
        with self._associate(contexts, what, roles=roles, handlers=handlers) as (assoc, watch):
            final: Dataset | None = None
            for status, _identifier in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
                if not status or "Status" not in status:
                    self._raise_lost(assoc, watch, what)
                if store.error is not None:
                    raise store.error
                if int(status.Status) in _PENDING:
                    if progress is not None:
                        progress(len(store.written))
                    continue
                final = status
                break
            if final is None:
                self._raise_lost(assoc, watch, what)
        if store.error is not None:
            raise store.error
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations") or 0)
        if code not in (0x0000, 0xB000):
            self._raise_status(code, final, what)
        missing = [s for s in sops if s not in store.written]
        if missing or failed:
            raise PACSProtocolError(
                f"{what}: {self._where()} sent {len(store.written)} of {len(sops)} instances "
                f"({failed} sub-operations failed, status 0x{code:04X}). Try again; if it "
                "persists, check the PACS's log for the instances it could not send."
            )
        if progress is not None:
            progress(len(store.written))
