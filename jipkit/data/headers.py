"""Read what the index needs from one DICOM file: header attributes and pixel layout.

This runs in worker processes during ingest, so it returns small plain dicts (no
arrays, no pydicom objects) that pickle cheaply.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from jipkit.data.schema import ATTRIBUTES, INTEGER, NUMERIC

__all__ = ["FILE_FIELDS", "HeaderError", "read_header", "to_python"]

#: Per-file fields stored beside the DICOM attributes of an instance.
FILE_FIELDS = (
    "location",
    "TransferSyntaxUID",
    "SpecificCharacterSet",
    "pixel_offset",
    "pixel_length",
    "file_size",
    "mtime_ns",
)

_ALL = tuple(k for level in ATTRIBUTES.values() for k in level)
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_PIXEL_TAG = (0x7FE0, 0x0010)


class HeaderError(Exception):
    """A file that could not be read; ``reason`` is a short code, ``detail`` the cause."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def to_python(keyword: str, value: Any) -> Any:
    """Convert a pydicom value to what the index stores (str, int, float or None)."""
    if value is None or value == "":
        return None
    if isinstance(value, PersonName):
        return str(value) or None
    if isinstance(value, MultiValue | list | tuple):
        items = [to_python(keyword, v) for v in value]
        return "\\".join("" if v is None else _fmt(v) for v in items) or None
    if keyword in NUMERIC:
        try:
            return int(value) if keyword in INTEGER else float(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, bytes):
        return None
    return str(value)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _functional(ds: Dataset, seq: str, inner: str, keyword: str) -> Any:
    """An attribute from the first item of a functional group (shared, else first frame)."""
    for groups in (
        ds.get("SharedFunctionalGroupsSequence"),
        ds.get("PerFrameFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        item = groups[0].get(inner)
        if item and keyword in item[0]:
            return item[0].get(keyword)
    return None


_ENHANCED = {
    "ImageOrientationPatient": ("PlaneOrientationSequence",),
    "ImagePositionPatient": ("PlanePositionSequence",),
    "PixelSpacing": ("PixelMeasuresSequence",),
    "SliceThickness": ("PixelMeasuresSequence",),
    "RescaleSlope": ("PixelValueTransformationSequence",),
    "RescaleIntercept": ("PixelValueTransformationSequence",),
}


def _pixel_layout(fp: Any, ts: str) -> tuple[int | None, int | None]:
    """Offset and length of native (uncompressed) pixel bytes at the file's position."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None, None
    group, elem = struct.unpack("<HH", head[:4])
    if (group, elem) != _PIXEL_TAG:
        return None, None
    if ts == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", head[4:8])
        offset = start + 8
    elif ts == ExplicitVRLittleEndian:
        vr = head[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", head[8:12])
            offset = start + 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            offset = start + 8
    else:
        return None, None
    if length == 0xFFFFFFFF:  # encapsulated: not native
        return None, None
    return offset, length


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one file's header into a flat record of index fields.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        DICOM keyword -> value for every attribute in :data:`jipkit.data.schema.ATTRIBUTES`
        plus :data:`FILE_FIELDS`.  ``pixel_offset``/``pixel_length`` are set only for
        native little-endian pixel data (what the fast loading path can read).

    Raises
    ------
    HeaderError
        Not DICOM, truncated, corrupt, or without a SOPInstanceUID.
    """
    p = Path(path)
    try:
        st = p.stat()
        with open(p, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                if "SOPInstanceUID" not in ds:
                    raise HeaderError("not_dicom", "no DICOM preamble and no SOPInstanceUID") from None
            meta = getattr(ds, "file_meta", None)
            ts = str(meta.get("TransferSyntaxUID", "")) if meta else ""
            if not ts:
                ts = ExplicitVRLittleEndian if not ds.is_implicit_VR else ImplicitVRLittleEndian
                if not ds.is_little_endian:
                    ts = "1.2.840.10008.1.2.2"
            offset, length = _pixel_layout(fp, ts)
    except HeaderError:
        raise
    except OSError as err:
        raise HeaderError("unreadable", f"{type(err).__name__}: {err.strerror or err}") from err
    except Exception as err:  # pydicom raises many types on corrupt input
        raise HeaderError("corrupt", f"{type(err).__name__}: {err}") from err
    try:
        rec: dict[str, Any] = {}
        for kw in _ALL:
            try:
                value = ds.get(kw)
            except Exception:  # a single malformed element must not lose the file
                value = None
            if value is None and kw in _ENHANCED:
                value = _functional(ds, "", _ENHANCED[kw][0], kw)
            rec[kw] = to_python(kw, value)
    except Exception as err:
        raise HeaderError("corrupt", f"{type(err).__name__}: {err}") from err
    charset = to_python("SpecificCharacterSet", ds.get("SpecificCharacterSet"))
    return complete_record(rec, p, st, ts, charset, (offset, length))


def complete_record(
    rec: dict[str, Any],
    path: Path,
    st: os.stat_result,
    ts: str,
    charset: str | None,
    layout: tuple[int | None, int | None],
) -> dict[str, Any]:
    """Check a record's identity and add the per-file fields (shared by both readers).

    Raises
    ------
    HeaderError
        No SOPInstanceUID, no study or series UID, or pixel data past the end of the file.
    """
    if not rec.get("SOPInstanceUID"):
        raise HeaderError("no_sop_instance_uid", "the file has no SOPInstanceUID")
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if not rec.get(k)]
    if missing:
        raise HeaderError("no_hierarchy", f"the file has no {' or '.join(missing)}")
    offset, length = layout
    if offset is not None and length is not None and offset + length > st.st_size:
        raise HeaderError("truncated", f"pixel data ends at byte {offset + length}, file has {st.st_size}")
    rec["PatientID"] = rec.get("PatientID") or ""
    rec["IssuerOfPatientID"] = rec.get("IssuerOfPatientID") or ""
    rec["location"] = str(path)
    rec["TransferSyntaxUID"] = ts
    rec["SpecificCharacterSet"] = charset
    rec["pixel_offset"] = offset
    rec["pixel_length"] = length
    rec["file_size"] = st.st_size
    rec["mtime_ns"] = st.st_mtime_ns
    return rec
