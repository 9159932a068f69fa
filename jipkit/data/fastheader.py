"""A faster :func:`jipkit.data.headers.read_header`: the same record, parsed by hand.

Indexing spends most of its time parsing headers.  :func:`read_header_fast` returns
exactly the record of :func:`~jipkit.data.headers.read_header` (same keys, values,
types and errors) for a fraction of the cost:

- it reads the first bytes of the file and walks the Part 10 preamble, the file meta
  group and the top-level elements of the dataset itself, keeping only the raw values
  of the indexed attributes and of SpecificCharacterSet, and stops at the pixel data;
- it skips every other element by its length; sequences of undefined length (which
  pydicom parses while reading) are scanned item by item, the way pydicom reads them;
- it converts the few raw values with pydicom's own machinery, as
  ``Dataset.get`` does (:func:`~pydicom.dataelem.convert_raw_data_element` with the
  encoding pydicom derives from SpecificCharacterSet), then with
  :func:`~jipkit.data.headers.to_python`, so text decoding follows the character
  set exactly as in ``read_header``;
- it remembers converted values per process, since most of them repeat from file
  to file (a value depends only on the raw bytes, the VR, the VR encoding and the
  character set; the memory is emptied whenever pydicom's settings change).

Whenever the file is anything but a plain, well-formed Part 10 file in a little
endian transfer syntax (no preamble, big endian, deflated, a command set, functional
groups, an element past the end of the file, an unknown VR, tags out of order, a
value that fails to convert, a file that read_header rejects, conversion hooks
registered with pydicom...), it returns what ``read_header`` itself returns or raises.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, Final, cast

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import ENCODED_VR
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

from jipkit.data.headers import _ALL, HeaderError, _pixel_layout, complete_record, read_header, to_python

__all__ = ["read_header_fast"]

_CHUNK: Final = 16384  # first read; most headers end well before
_MAX_DEPTH: Final = 32  # nested sequences deeper than this go to pydicom
_CACHE_MAX: Final = 32_768  # converted values remembered per character set
_CHARSETS_MAX: Final = 8  # character sets (and VR encodings) remembered
_OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)

_SCS: Final = 0x00080005
_GROUP_LENGTH: Final = 0x00020000
_TS: Final = 0x00020010
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQ_END: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
#: pydicom's ``stop_before_pixels`` stops at any of these top-level tags.
_STOP: Final = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
#: Shared and per-frame functional groups: read_header may look inside them.
_FUNCTIONAL: Final = frozenset({0x52009229, 0x52009230})


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - schema keywords are all in the dictionary
        raise ValueError(f"unknown DICOM keyword {keyword}")
    return tag


#: (keyword, tag) of every attribute the record holds, SpecificCharacterSet last.
_WANTED: Final = tuple((kw, _tag(kw)) for kw in (*_ALL, "SpecificCharacterSet"))
_WANTED_TAGS: Final = frozenset(tag for _, tag in _WANTED)
_KEYWORDS: Final = tuple(kw for kw, _ in _WANTED)
_KEYWORD_OF: Final = {tag: kw for kw, tag in _WANTED}
#: Explicit VR codes as pydicom knows them, and those with a 4-byte length.
_VRS: Final = {code: code.decode(default_encoding) for code in ENCODED_VR if len(code) == 2}
_LONG_VRS: Final = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_CODES: Final = {code: vr for code, vr in _VRS.items() if vr not in _LONG_VRS}
_LONG_CODES: Final = {code: vr for code, vr in _VRS.items() if vr in _LONG_VRS}
#: What the top-level walk does at a tag: keep its value, stop, or give up.
_KEEP, _STOP_HERE, _REFUSE = 1, 2, 3
_ACTION: Final = {
    **{tag: _KEEP for tag in _WANTED_TAGS},
    **{tag: _STOP_HERE for tag in _STOP},
    **{tag: _REFUSE for tag in _FUNCTIONAL},
}

_HEAD = struct.Struct("<HHI").unpack_from  # implicit element or item: group, element, length
_EXPLICIT = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 2-byte length
_U32 = struct.Struct("<I").unpack_from
_TAG = struct.Struct("<HH").unpack_from

#: (implicit, raw SpecificCharacterSet) -> (tag, VR, length, raw value) -> value in the record.
_VALUES: dict[tuple[Any, ...], dict[Any, Any]] = {}
_ENCODING: Final = "encoding"  # key of the text encoding in each of those
#: Raw file meta keys -> (TransferSyntaxUID, implicit VR).
_META: dict[tuple[Any, ...], tuple[str, bool]] = {}
#: Raw SpecificCharacterSet keys that pydicom reads without raising.
_CHARSETS: set[tuple[Any, ...]] = set()
#: The pydicom settings the caches were filled under.
_CONFIG: list[tuple[Any, ...] | None] = [None]

Element = tuple[int, str | None, int, int]  # tag, VR, length, position of the value
Raw = tuple[int, str | None, int, bytes | None, int]  # tag, VR, length, value, its position


class _Fallback(Exception):
    """The file needs pydicom: anything the fast path is not sure to read the same way."""


class _Source:
    """Bytes of an open file, read in chunks on demand.

    Parameters
    ----------
    fd : int
        Open file descriptor.
    size : int
        File size in bytes.
    """

    __slots__ = ("base", "buf", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.base = 0
        self.buf = os.pread(fd, _CHUNK, 0)

    def take(self, pos: int, n: int) -> tuple[bytes, int]:
        """A buffer and an index in it where bytes ``pos`` to ``pos + n`` of the file lie.

        Parameters
        ----------
        pos, n : int
            File offset and number of bytes.

        Returns
        -------
        tuple of (bytes, int)

        Raises
        ------
        _Fallback
            The file ends before ``pos + n``.
        """
        i = pos - self.base
        if i >= 0 and i + n <= len(self.buf):
            return self.buf, i
        if pos + n > self.size:
            raise _Fallback
        self.buf = os.pread(self.fd, max(n, _CHUNK), pos)
        self.base = pos
        if len(self.buf) < n:
            raise _Fallback
        return self.buf, 0

    def bytes(self, pos: int, n: int) -> bytes:
        """Bytes ``pos`` to ``pos + n`` of the file (see :meth:`take`)."""
        buf, i = self.take(pos, n)
        return buf[i : i + n]


class _At:
    """The file-like that :func:`jipkit.data.headers._pixel_layout` reads from."""

    def __init__(self, pos: int, head: bytes) -> None:
        self.pos = pos
        self.head = head

    def tell(self) -> int:
        """Position of the element that ended the dataset."""
        return self.pos

    def read(self, n: int) -> bytes:
        """The first ``n`` bytes there (fewer at the end of the file)."""
        return self.head[:n]


def _element(src: _Source, pos: int, explicit: bool) -> Element:
    """Parse the element header at ``pos`` as pydicom's data_element_generator does.

    Parameters
    ----------
    src : _Source
    pos : int
        File offset of the tag.
    explicit : bool
        Explicit VR encoding.

    Returns
    -------
    tuple of (int, str or None, int, int)
        Tag, VR (None in implicit VR and for group FFFE), value length and value offset.

    Raises
    ------
    _Fallback
        Truncated header, or an explicit VR pydicom would not read as such.
    """
    buf, i = src.take(pos, 8)
    if not explicit:
        group, elem, length = _HEAD(buf, i)
        return group << 16 | elem, None, length, pos + 8
    group, elem, code, length = _EXPLICIT(buf, i)
    if group == 0xFFFE:  # items and delimiters have no VR
        return group << 16 | elem, None, _HEAD(buf, i)[2], pos + 8
    vr = _VRS.get(code)
    if vr is None:
        raise _Fallback
    if vr in _LONG_VRS:
        buf, i = src.take(pos, 12)
        return group << 16 | elem, vr, _U32(buf, i + 8)[0], pos + 12
    return group << 16 | elem, vr, length, pos + 8


def _undefined(src: _Source, elem: Element, implicit: bool, depth: int) -> int:
    """Skip an element of undefined length; pydicom parses it while reading.

    Parameters
    ----------
    src : _Source
    elem : Element
    implicit : bool
        VR encoding of the dataset holding the element.
    depth : int
        Nesting level of the dataset holding the element.

    Returns
    -------
    int
        File offset after the sequence delimiter.

    Raises
    ------
    _Fallback
        Not a sequence (pydicom scans such values for a delimiter), or malformed.
    """
    tag, vr, _, at = elem
    if vr == "UN" and config.settings.infer_sq_for_un_vr:
        vr = "SQ"
    elif vr is None:
        try:
            vr = _dictionary_vr_fast(tag)
        except KeyError:
            buf, i = src.take(at, 4)
            vr = "SQ" if _TAG(buf, i) == (0xFFFE, 0xE000) else None
    if vr != "SQ" or depth >= _MAX_DEPTH:
        raise _Fallback
    return _sequence(src, at, implicit, depth + 1)


def _sequence(src: _Source, pos: int, implicit: bool, depth: int) -> int:
    """Skip the items of a sequence of undefined length, as pydicom's read_sequence."""
    while True:
        buf, i = src.take(pos, 8)
        group, elem, length = _HEAD(buf, i)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END and length == 0:
            return pos
        if tag != _ITEM:
            raise _Fallback
        if length == _UNDEFINED:
            pos = _item(src, pos, None, implicit, depth)
        else:
            if pos + length > src.size:
                raise _Fallback
            _item(src, pos, pos + length, implicit, depth)
            pos += length


def _item_is_implicit(src: _Source, pos: int, implicit: bool) -> bool:
    """pydicom reads an explicit VR item as implicit when its first VR is not two capitals."""
    if implicit or src.size - pos < 6:
        return implicit
    buf, i = src.take(pos, 6)
    return not (0x40 < buf[i + 4] < 0x5B and 0x40 < buf[i + 5] < 0x5B)


def _item(src: _Source, pos: int, end: int | None, implicit: bool, depth: int) -> int:
    """Skip the elements of one sequence item, as pydicom's read_dataset.

    Parameters
    ----------
    src : _Source
    pos : int
        File offset of the item's first element.
    end : int or None
        File offset of the item's end, None for an item of undefined length.
    implicit : bool
        VR encoding of the sequence.
    depth : int
        Nesting level of the item.

    Returns
    -------
    int
        File offset after the item (and its delimiter).
    """
    implicit = _item_is_implicit(src, pos, implicit)
    while end is None or pos < end:
        elem = _element(src, pos, not implicit)
        tag, _, length, at = elem
        if tag >> 16 == 0xFFFE:
            if tag == _ITEM_END and end is None and length == 0:
                return at
            raise _Fallback
        if tag == _SCS:  # pydicom decodes it while reading
            raise _Fallback
        pos = _undefined(src, elem, implicit, depth) if length == _UNDEFINED else at + length
    if pos != end:
        raise _Fallback
    return pos


def _fetch(src: _Source, pos: int) -> tuple[bytes, int]:
    """The buffer holding the (up to 12-byte) element header at ``pos``, and its base."""
    if src.size - pos < 8:
        raise _Fallback
    src.take(pos, min(12, src.size - pos))
    return src.buf, src.base


def _value(src: _Source, vr: str | None, length: int, at: int) -> bytes | None:
    """The raw value pydicom stores for a defined-length element."""
    if not length:
        return cast(bytes | None, empty_value_for_VR(vr, raw=True))
    return src.bytes(at, length)


def _dataset(src: _Source, pos: int, implicit: bool) -> tuple[dict[int, Raw], int]:
    """Walk the top-level elements up to the pixel data, keeping the wanted ones.

    One loop for the whole dataset, without a call per element: this is where the
    time goes.

    Parameters
    ----------
    src : _Source
    pos : int
        File offset of the dataset's first element.
    implicit : bool
        Implicit VR Little Endian, else Explicit VR Little Endian.

    Returns
    -------
    found : dict
        Tag -> raw element, for the wanted tags present.
    pos : int
        File offset where pydicom's reading stops: the pixel data element, or the end.
    """
    size = src.size
    if size - pos < 8 or (implicit and not _item_is_implicit(src, pos, False)):
        raise _Fallback  # nothing to read, or pydicom would switch to explicit VR
    found: dict[int, Raw] = {}
    prev = 0x0002FFFF  # no command set, no file meta inside the dataset
    head, explicit_head, u32 = _HEAD, _EXPLICIT, _U32
    short_codes, long_codes, action_of = _SHORT_CODES.get, _LONG_CODES.get, _ACTION.get
    buf, base = src.buf, src.base
    while pos < size:
        i = pos - base
        if i < 0 or i + 12 > len(buf):
            buf, base = _fetch(src, pos)
            i = pos - base
        at = pos + 8
        if implicit:
            group, elem, length = head(buf, i)
            vr = None
        else:
            group, elem, code, length = explicit_head(buf, i)
            vr = short_codes(code)
            if vr is None:
                vr = long_codes(code)
                if vr is None or i + 12 > len(buf):
                    raise _Fallback
                length = u32(buf, i + 8)[0]
                at += 4
        tag = group << 16 | elem
        if tag <= prev or group == 0xFFFE:
            raise _Fallback
        action = action_of(tag)
        if action is None:
            if length == _UNDEFINED:
                pos = _undefined(src, (tag, vr, length, at), implicit, 0)
                buf, base = src.buf, src.base
            elif at + length > size:
                raise _Fallback
            else:
                pos = at + length
        elif action == _KEEP:
            if length == _UNDEFINED or vr == "SQ" or at + length > size:
                raise _Fallback
            j = at - base
            if length and j + length <= len(buf):
                found[tag] = (tag, vr, length, buf[j : j + length], at)
            else:
                found[tag] = (tag, vr, length, _value(src, vr, length, at), at)
                buf, base = src.buf, src.base
            pos = at + length
        elif action == _STOP_HERE:
            return found, pos
        else:
            raise _Fallback
        prev = tag
    return found, pos


def _meta(src: _Source) -> tuple[list[Raw], int]:
    """The raw file meta elements after the preamble, and where the dataset starts."""
    size = src.size
    if size < 140 or src.bytes(128, 4) != b"DICM":
        raise _Fallback
    pos = 132
    raws: list[Raw] = []
    prev = 0x0001FFFF
    while True:
        buf, i = src.take(pos, 8)
        if _HEAD(buf, i)[0] != 2:
            break
        tag, vr, length, at = _element(src, pos, True)
        if length == _UNDEFINED or tag <= prev or at + length > size:
            raise _Fallback
        raws.append((tag, vr, length, _value(src, vr, length, at), at))
        pos = at + length
        prev = tag
    if not raws:
        raise _Fallback
    return raws, pos


def _raw(raw: Raw, implicit: bool) -> RawDataElement:
    """The RawDataElement pydicom builds for a defined-length element."""
    tag, vr, length, value, at = raw
    return RawDataElement(BaseTag(tag), vr, length, value, at, implicit, True)


def _transfer_syntax(raws: list[Raw]) -> tuple[str, bool]:
    """TransferSyntaxUID as read_header reports it, and whether pydicom reads implicit VR.

    Parameters
    ----------
    raws : list of Raw
        The file meta elements, in file order.

    Returns
    -------
    tuple of (str, bool)

    Raises
    ------
    _Fallback
        No usable transfer syntax, or one pydicom reads otherwise (big endian, deflate).
    """
    by_tag = {raw[0]: raw for raw in raws}
    used = (raws[0], by_tag.get(_GROUP_LENGTH), by_tag.get(_TS))
    key = tuple(None if raw is None else raw[:4] for raw in used)
    hit = _META.get(key)
    if hit is None:
        hit = _read_transfer_syntax([_raw(raw, False) for raw in used if raw is not None])
        _META[key] = hit
    return hit


def _read_transfer_syntax(raws: list[RawDataElement]) -> tuple[str, bool]:
    """What pydicom's _read_file_meta_info and read_partial make of the file meta."""
    meta = FileMetaDataset({raw.tag: raw for raw in raws})
    meta.set_original_encoding(False, True, default_encoding)
    try:
        meta[raws[0].tag]
        if "FileMetaInformationGroupLength" in meta:
            getattr(meta, "FileMetaInformationGroupLength")  # noqa: B009 - raises like pydicom
        uid = meta.get("TransferSyntaxUID")
    except Exception as err:  # read_header reports these as corrupt files
        raise _Fallback from err
    if not isinstance(uid, str) or not str(uid):
        raise _Fallback
    if uid in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian) or uid in PrivateTransferSyntaxes:
        raise _Fallback
    return str(uid), uid == ImplicitVRLittleEndian


def _check_charset(raw: RawDataElement) -> None:
    """Decode SpecificCharacterSet as pydicom does while reading (it may raise)."""
    key = (raw.VR, raw.value)
    if key in _CHARSETS:
        return
    convert_encodings(convert_string(raw.value or b"", True))
    convert_encodings(convert_raw_data_element(raw).value)
    _CHARSETS.add(key)


def _encoding(scs: Raw | None, implicit: bool) -> str | list[str]:
    """The encoding read_header's dataset decodes text with (pydicom works it out)."""
    if scs is None:
        return Dataset()._character_set
    raw = _raw(scs, implicit)
    _check_charset(raw)
    return Dataset({raw.tag: raw})._character_set


def _convert(keyword: str, raw: Raw, implicit: bool, encoding: str | list[str]) -> Any:
    """One attribute as read_header stores it.

    This is what ``Dataset.get(keyword)`` does for a raw element of a public,
    non-sequence tag with an unambiguous VR (as all the wanted ones are).
    """
    elem = _raw(raw, implicit)
    if raw[0] == _SCS:  # read while reading the file: failures are not caught
        return to_python(keyword, convert_raw_data_element(elem, encoding=default_encoding).value)
    try:
        value = convert_raw_data_element(elem, encoding=encoding).value
    except Exception:  # read_header keeps the file, without this attribute
        value = None
    return to_python(keyword, value)


def _cache(implicit: bool, charset: tuple[Any, ...] | None) -> dict[Any, Any]:
    """The remembered values for one VR encoding and SpecificCharacterSet."""
    key = (implicit, charset)
    values = _VALUES.get(key)
    if values is None:
        if len(_VALUES) >= _CHARSETS_MAX:
            _VALUES.clear()
        values = _VALUES[key] = {}
    return values


def _values(found: dict[int, Raw], implicit: bool) -> dict[str, Any]:
    """Keyword -> record value of every wanted attribute, remembered or converted.

    A value depends only on the tag, the VR and bytes read, the VR encoding and the
    SpecificCharacterSet, so equal inputs give equal values from file to file; those
    not seen before are converted with pydicom.
    """
    scs = found.get(_SCS)
    cache = _cache(implicit, None if scs is None else scs[1:4])
    out: dict[str, Any] = dict.fromkeys(_KEYWORDS)
    missed: list[tuple[str, Raw]] = []
    for tag, raw in found.items():
        value = cache.get(raw[:4], cache)
        if value is cache:
            missed.append((_KEYWORD_OF[tag], raw))
        else:
            out[_KEYWORD_OF[tag]] = value
    if missed:
        _convert_missed(missed, scs, implicit, out, cache)
    return out


def _convert_missed(
    missed: list[tuple[str, Raw]],
    scs: Raw | None,
    implicit: bool,
    out: dict[str, Any],
    cache: dict[Any, Any],
) -> None:
    """Convert the values not seen before with pydicom, and remember them."""
    encoding = cache.get(_ENCODING)
    if encoding is None:
        encoding = cache[_ENCODING] = _encoding(scs, implicit)
    if len(cache) + len(missed) > _CACHE_MAX:
        cache.clear()
        cache[_ENCODING] = encoding
    for keyword, raw in missed:
        out[keyword] = cache[raw[:4]] = _convert(keyword, raw, implicit, encoding)


def _record(
    path: Path, st: os.stat_result, ts: str, values: dict[str, Any], layout: tuple[int | None, int | None]
) -> dict[str, Any] | None:
    """The record read_header returns, or None where it raises (it then says why)."""
    try:
        return complete_record(
            {kw: values[kw] for kw in _ALL}, path, st, ts, values["SpecificCharacterSet"], layout
        )
    except HeaderError:
        return None


def _parse(src: _Source) -> tuple[str, dict[str, Any], tuple[int | None, int | None]]:
    """Transfer syntax, attribute values and pixel layout of an open file."""
    meta, pos = _meta(src)
    ts, implicit = _transfer_syntax(meta)
    found, stop = _dataset(src, pos, implicit)
    head = src.bytes(stop, min(12, src.size - stop))
    layout = _pixel_layout(_At(stop, head), ts)
    return ts, _values(found, implicit), layout


def _default_hooks() -> bool:
    """Whether pydicom converts raw elements its own default way (what the fast path assumes)."""
    return (
        hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
        and not hooks.raw_element_kwargs
        and not config.data_element_callback
    )


def _config() -> tuple[Any, ...]:
    """The pydicom settings that change how values are read and converted."""
    return (
        config.settings.reading_validation_mode,
        config.settings.infer_sq_for_un_vr,
        config.use_DS_decimal,
        config.use_DS_numpy,
        config.use_IS_numpy,
        config.allow_DS_float,
        config.datetime_conversion,
        config.convert_wrong_length_to_UN,
        config.use_none_as_empty_text_VR_value,
        config.replace_un_with_known_vr,
        config.assume_implicit_vr_switch,
    )


def _forget_if_config_changed() -> None:
    """Empty the caches when pydicom's settings differ from those they were filled under."""
    current = _config()
    if current != _CONFIG[0]:
        _VALUES.clear()
        _META.clear()
        _CHARSETS.clear()
        _CONFIG[0] = current


def _read_fast(path: Path) -> dict[str, Any] | None:
    """The record, or None when the file must go through read_header."""
    if not _default_hooks():
        return None
    _forget_if_config_changed()
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        ts, values, layout = _parse(_Source(fd, st.st_size))
    finally:
        os.close(fd)
    return _record(path, st, ts, values, layout)


def read_header_fast(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one file's header into the record of :func:`jipkit.data.headers.read_header`.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        Exactly what ``read_header(path)`` returns.

    Raises
    ------
    HeaderError
        Exactly where ``read_header(path)`` raises it (the file is then read by
        ``read_header``).
    """
    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = _read_fast(p)
        except Exception:  # whatever the fast path is unsure of, pydicom decides
            rec = None
        if rec is not None:
            return rec
        return read_header(p)
