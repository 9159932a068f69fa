"""Tests of jipkit.data.fastheader: read_header_fast is read_header, only faster.

Every check compares the outcome of both readers on the same file: the same record
(same keys, values and value types), or the same HeaderError reason.  Checks that
matter for speed also assert that the fast path itself produced the record, so a
fast reader that always fell back to pydicom would not pass.
"""

from __future__ import annotations

import os
import random
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from jipkit.data import fastheader
from jipkit.data.fastheader import read_header_fast
from jipkit.data.headers import HeaderError, read_header
from jipkit.data.synth import write_series

Outcome = tuple[Any, ...]


def outcome(read: Any, path: Path | str) -> Outcome:
    """What a reader makes of a file: the record and its value types, or the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = read(path)
        except HeaderError as err:
            return ("error", err.reason)
        except Exception as err:  # both readers must fail alike, even outside HeaderError
            return ("exception", type(err).__name__)
    return ("ok", rec, {k: type(v) for k, v in rec.items()})


def fast_only(path: Path | str) -> dict[str, Any] | None:
    """The fast path's record, None where it hands the file to read_header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fastheader._read_fast(Path(path))
        except Exception:
            return None


def assert_same(path: Path | str) -> Outcome:
    expected = outcome(read_header, path)
    assert outcome(read_header_fast, path) == expected, path
    return expected


def pydicom_files() -> list[str]:
    files = [*get_testdata_files(), *get_charset_files()]
    return sorted(p for p in files if os.path.isfile(p))


# --------------------------------------------------------------------------- pydicom's files


@pytest.mark.parametrize("path", pydicom_files(), ids=lambda p: Path(p).name)
def test_pydicom_test_files(path: str) -> None:
    expected = assert_same(path)
    fast = fast_only(path)
    if fast is not None:  # what the fast path returns is read_header's record
        assert expected[0] == "ok"
        assert fast == expected[1]


def test_fast_path_reads_most_pydicom_files() -> None:
    files = pydicom_files()
    fast = [p for p in files if fast_only(p) is not None]
    assert len(fast) > 0.7 * len(files)
    names = {Path(p).name for p in fast}
    # encapsulated pixel data and undefined-length sequences before it
    assert {"JPEG2000.dcm", "reportsi.dcm", "waveform_ecg.dcm", "MR_small_RLE.dcm"} <= names
    # implicit VR, and character sets
    assert {"rtplan.dcm", "chrH31.dcm", "chrJapMulti.dcm", "chrX1.dcm"} <= names


def test_value_cache_does_not_change_results() -> None:
    files = pydicom_files()
    first = [outcome(read_header_fast, p) for p in files]
    fastheader._VALUES.clear()
    fastheader._META.clear()
    fastheader._CHARSETS.clear()
    assert [outcome(read_header_fast, p) for p in reversed(files)] == first[::-1]


# --------------------------------------------------------------------------- synthetic series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("fastheader")
    out: dict[str, list[Path]] = {}
    for i, ts in enumerate(
        (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            RLELossless,
            JPEGLSLossless,
            DeflatedExplicitVRLittleEndian,
        )
    ):
        patient = {"PatientName": "Müller^Jürgen", "PatientID": "ÄÖÜ-1"} if i % 2 else None
        info = write_series(root / str(i), shape=(4, 16, 16), seed=i, transfer_syntax=ts, patient=patient)
        out[ts] = info.paths
    out["multiframe"] = write_series(root / "mf", shape=(4, 16, 16), multiframe=True, seed=9).paths
    return out


@pytest.mark.parametrize(
    "ts",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless],
    ids=["explicit", "implicit", "rle", "jpegls"],
)
def test_synthetic_series_on_the_fast_path(series: dict[str, list[Path]], ts: str) -> None:
    for path in series[ts]:
        expected = assert_same(path)
        assert expected[0] == "ok"
        assert fast_only(path) == expected[1]
        rec = expected[1]
        assert rec["TransferSyntaxUID"] == ts
        native = ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert (rec["pixel_offset"] is not None) == native


def test_synthetic_deflated_and_multiframe_fall_back(series: dict[str, list[Path]]) -> None:
    for path in [*series[DeflatedExplicitVRLittleEndian], *series["multiframe"]]:
        assert assert_same(path)[0] == "ok"
        assert fast_only(path) is None


def cuts(size: int, header: int) -> Iterable[int]:
    """Offsets to cut a file at: every byte of the first 200, then a stride to the end."""
    yield from range(min(size, 200))
    yield from range(200, header + 16, 5)
    yield from range(header + 16, size, max(1, (size - header) // 25))


def header_end(path: Path) -> int:
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return at if at > 0 else len(data)


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless], ids=["explicit", "implicit", "rle"]
)
def test_truncated_synthetic_files(series: dict[str, list[Path]], ts: str, tmp_path: Path) -> None:
    source = series[ts][0]
    data = source.read_bytes()
    for n in cuts(len(data), header_end(source)):
        path = tmp_path / f"cut{n}.dcm"
        path.write_bytes(data[:n])
        assert_same(path)
        path.unlink()


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "JPEG2000.dcm", "chrSQEncoding.dcm"])
def test_truncated_pydicom_files(name: str, tmp_path: Path) -> None:
    source = Path(get_testdata_file(name) or get_charset_files(name)[0])
    data = source.read_bytes()
    for n in cuts(len(data), min(header_end(source), 3000)):
        path = tmp_path / f"cut{n}.dcm"
        path.write_bytes(data[:n])
        assert_same(path)
        path.unlink()


def test_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(7)
    for i in range(60):
        data = bytearray(rng.randbytes(rng.randrange(1, 3000)))
        if i % 2 and len(data) > 132:
            data[128:132] = b"DICM"
        path = tmp_path / f"r{i}.dcm"
        path.write_bytes(bytes(data))
        assert_same(path)


def test_mutated_files(series: dict[str, list[Path]], tmp_path: Path) -> None:
    """Bytes overwritten in the header: both readers agree, whatever the damage."""
    rng = random.Random(11)
    sources = [series[ExplicitVRLittleEndian][0], series[ImplicitVRLittleEndian][0]]
    sources += [
        Path(p) for p in pydicom_files() if Path(p).name in {"reportsi.dcm", "JPEG2000.dcm", "chrX1.dcm"}
    ]
    patches = [
        b"\xff\xff\xff\xff",
        b"\xfe\xff\x00\xe0",
        b"\xfe\xff\xdd\xe0",
        b"\xfe\xff\x0d\xe0",
        b"SQ\0\0",
        b"UN\0\0",
    ]
    for i in range(400):
        data = bytearray(rng.choice(sources).read_bytes())
        end = min(len(data), 3000)
        if i % 3:
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(end)] = rng.randrange(256)
        else:
            at = rng.randrange(end - 4)
            data[at : at + 4] = rng.choice(patches)
        path = tmp_path / f"m{i}.dcm"
        path.write_bytes(bytes(data))
        assert_same(path)
        path.unlink()


CHARSETS = [
    b"",
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
    b"\\ISO 2022 IR 87",
    b"ISO_IR 6\\ISO 2022 IR 100",
    b"GB18030",
    b"ISO_IR 999",
    b"iso_ir 100",
    b"ISO_IR 100\\ISO_IR 144",
    b"\xff\xfe",
]
VALUE_BYTES = b"0123456789.-+eE \\^=ABCabc\x00\x1b$B()\xc3\xa4\xe9\xff/:"


def value_positions(path: Path) -> list[tuple[int, int, int]]:
    """(tag, offset, length) of the indexed attributes' values, found by the fast parser."""
    fd = os.open(path, os.O_RDONLY)
    try:
        src = fastheader._Source(fd, os.fstat(fd).st_size)
        meta, pos = fastheader._meta(src)
        _, implicit = fastheader._transfer_syntax(meta)
        found, _ = fastheader._dataset(src, pos, implicit)
    finally:
        os.close(fd)
    return [(tag, at, length) for tag, _, length, _, at in found.values() if length]


def test_garbled_values(series: dict[str, list[Path]], tmp_path: Path) -> None:
    """Random bytes and character sets in the indexed values: the same record, read fast."""
    rng = random.Random(5)
    sources = [series[ExplicitVRLittleEndian][0], series[ImplicitVRLittleEndian][0], series[RLELossless][0]]
    sources += [Path(p) for p in get_charset_files() if p.endswith(".dcm") and "SQ" not in p]
    fast = 0
    for i in range(300):
        source = rng.choice(sources)
        data = bytearray(source.read_bytes())
        positions = value_positions(source)
        for tag, at, length in rng.sample(positions, min(len(positions), rng.randint(1, 4))):
            if tag == 0x00080005:
                new = rng.choice(CHARSETS).ljust(length)[:length]
            else:
                new = bytes(rng.choice(VALUE_BYTES) for _ in range(length))
            data[at : at + length] = new
        path = tmp_path / f"g{i}.dcm"
        path.write_bytes(bytes(data))
        assert_same(path)
        fast += fast_only(path) is not None
        path.unlink()
    assert fast > 250


def test_unreadable_paths(tmp_path: Path) -> None:
    assert assert_same(tmp_path / "missing.dcm")[0] == "error"
    assert assert_same(tmp_path)[0] == "error"  # a folder
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert assert_same(tmp_path / "empty.dcm")[0] == "error"


# --------------------------------------------------------------------------- hand-built files

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def pad(value: bytes, vr: str = "") -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in {"UI", "OB", "UN"} else b" "
    return value


def ex(tag: int, vr: str, value: bytes = b"", length: int | None = None) -> bytes:
    """An explicit VR little endian element (``length`` overrides the real one)."""
    value = pad(value, vr)
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), n) + value


def im(tag: int, value: bytes = b"", length: int | None = None) -> bytes:
    """An implicit VR little endian element."""
    value = pad(value)
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def item(content: bytes, undefined: bool = True) -> bytes:
    if undefined:
        return (
            struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + content + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        )
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content


SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)

BASE: dict[int, tuple[str, bytes]] = {
    0x00080016: ("UI", b"1.2.840.10008.5.1.4.1.1.2"),
    0x00080018: ("UI", b"1.2.3.4.5.6"),
    0x00080060: ("CS", b"CT"),
    0x00100010: ("PN", b"Doe^John"),
    0x00100020: ("LO", b"ID1"),
    0x0020000D: ("UI", b"1.2.3.4"),
    0x0020000E: ("UI", b"1.2.3.4.5"),
    0x00200013: ("IS", b"7"),
    0x00280010: ("US", struct.pack("<H", 2)),
    0x00280011: ("US", struct.pack("<H", 2)),
    0x00280100: ("US", struct.pack("<H", 16)),
}
PIXELS = 0x7FE00010


def body(explicit: bool, extra: dict[int, bytes] | None = None, pixels: bytes | None = b"\0" * 8) -> bytes:
    """A dataset of BASE plus ``extra`` (tag -> encoded element), in tag order."""
    parts = {tag: ex(tag, vr, v) if explicit else im(tag, v) for tag, (vr, v) in BASE.items()}
    parts.update(extra or {})
    if pixels is not None:
        parts[PIXELS] = ex(PIXELS, "OW", pixels) if explicit else im(PIXELS, pixels)
    return b"".join(parts[t] for t in sorted(parts))


def part10(dataset: bytes, ts: str | None = ExplicitVRLittleEndian, group_length: bool = True) -> bytes:
    meta = ex(0x00020001, "OB", b"\0\1") + ex(0x00020002, "UI", BASE[0x00080016][1])
    meta += ex(0x00020003, "UI", BASE[0x00080018][1])
    if ts is not None:
        meta += ex(0x00020010, "UI", ts.encode())
    if group_length:
        meta = ex(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    return b"\0" * 128 + b"DICM" + meta + dataset


def private_seq(content: bytes, explicit: bool, vr: str = "SQ") -> dict[int, bytes]:
    creator = ex(0x00090010, "LO", b"JIP") if explicit else im(0x00090010, b"JIP")
    head = ex(0x00091001, vr, length=UNDEFINED) if explicit else im(0x00091001, length=UNDEFINED)
    return {0x00090010: creator, 0x00091001: head + content + SEQ_END}


CODE = ex(0x00080100, "SH", b"T-1") + ex(0x00080102, "SH", b"SRT")
CODE_IMPLICIT = im(0x00080100, b"T-1") + im(0x00080102, b"SRT")
NESTED = item(ex(0x00081250, "SQ", length=UNDEFINED) + item(CODE) + item(b"") + SEQ_END)

HAND_BUILT: dict[str, tuple[bytes, bool]] = {
    # name: (file, whether the fast path must read it itself)
    "explicit": (part10(body(True)), True),
    "implicit": (part10(body(False), ImplicitVRLittleEndian), True),
    "no pixel data": (part10(body(True, pixels=None)), True),
    "encapsulated": (
        part10(
            body(True, pixels=None)
            + ex(PIXELS, "OB", length=UNDEFINED)
            + item(b"", False)
            + item(b"ab", False),
            RLELossless,
        ),
        True,
    ),
    "float pixel data": (part10(body(True, {0x7FE00008: ex(0x7FE00008, "OF", b"\0" * 8)}, None)), True),
    "empty values": (
        part10(body(True, {0x00100010: ex(0x00100010, "PN"), 0x00100020: ex(0x00100020, "LO")})),
        True,
    ),
    "implicit empty values": (
        part10(body(False, {0x00100010: im(0x00100010), 0x00200013: im(0x00200013)}), ImplicitVRLittleEndian),
        True,
    ),
    "explicit UN for a known tag": (part10(body(True, {0x00080060: ex(0x00080060, "UN", b"MR")})), True),
    "undefined-length sequence": (
        part10(body(True, {0x00082218: ex(0x00082218, "SQ", length=UNDEFINED) + NESTED + SEQ_END})),
        True,
    ),
    "defined-length items": (
        part10(
            body(True, {0x00082218: ex(0x00082218, "SQ", length=UNDEFINED) + item(CODE, False) + SEQ_END})
        ),
        True,
    ),
    "defined-length sequence": (
        part10(body(True, {0x00082218: ex(0x00082218, "SQ", item(CODE, False) + item(b"", False))})),
        True,
    ),
    "implicit items in an explicit file": (
        part10(
            body(True, {0x00082218: ex(0x00082218, "SQ", length=UNDEFINED) + item(CODE_IMPLICIT) + SEQ_END})
        ),
        True,
    ),
    "UN sequence of undefined length": (
        part10(body(True, private_seq(item(CODE_IMPLICIT) + item(b""), True, "UN"))),
        True,
    ),
    "implicit private sequence": (
        part10(body(False, private_seq(item(CODE_IMPLICIT), False)), ImplicitVRLittleEndian),
        True,
    ),
    "implicit known sequence": (
        part10(
            body(False, {0x00082218: im(0x00082218, length=UNDEFINED) + item(CODE_IMPLICIT) + SEQ_END}),
            ImplicitVRLittleEndian,
        ),
        True,
    ),
    "charset": (
        part10(
            body(
                True,
                {
                    0x00080005: ex(0x00080005, "CS", b"ISO_IR 100"),
                    0x00100010: ex(0x00100010, "PN", b"M\xfcller"),
                },
            )
        ),
        True,
    ),
    "unknown charset": (part10(body(True, {0x00080005: ex(0x00080005, "CS", b"ISO_IR 999")})), True),
    "bad values": (
        part10(
            body(True, {0x00200013: ex(0x00200013, "IS", b"x7"), 0x00280010: ex(0x00280010, "US", b"\1")})
        ),
        True,
    ),
    "no group length": (part10(body(True), group_length=False), True),
    # what the fast path hands to read_header
    "no transfer syntax": (part10(body(True), None), False),
    "no preamble": (body(True), False),
    "big endian": (part10(body(True), "1.2.840.10008.1.2.2"), False),
    "implicit dataset, explicit syntax": (part10(body(False)), False),
    "explicit dataset, implicit syntax": (part10(body(True), ImplicitVRLittleEndian), False),
    "command set": (part10(ex(0x00000000, "UL", b"\0\0\0\0") + body(True)), False),
    "functional groups": (
        part10(body(True, {0x52009229: ex(0x52009229, "SQ", item(b"", False))}, None)),
        False,
    ),
    "charset in a sequence": (
        part10(
            body(True, private_seq(item(ex(0x00080005, "CS", b"ISO_IR 100")), True)),
        ),
        False,
    ),
    "sequence delimiter with a length": (
        part10(
            body(True, private_seq(item(CODE)[:-8] + struct.pack("<HHI", 0xFFFE, 0xE00D, 4) + b"abcd", True))
        ),
        False,
    ),
    "item without its delimiter": (
        part10(body(True, {0x00082218: ex(0x00082218, "SQ", length=UNDEFINED) + item(CODE)[:-8] + SEQ_END})),
        False,
    ),
    "undefined-length text": (
        part10(body(True, {0x00081030: ex(0x00081030, "UT", length=UNDEFINED) + SEQ_END})),
        False,
    ),
    "pixel data past the end": (
        part10(body(True, pixels=None) + ex(PIXELS, "OW", length=64) + b"\0" * 8),
        False,
    ),
    "pixel header cut short": (part10(body(True, pixels=None) + ex(PIXELS, "OW", length=64)[:10]), False),
    "no SOPInstanceUID": (part10(body(True, {0x00080018: b""})), False),
    "no SeriesInstanceUID": (part10(body(True, {0x0020000E: b""})), False),
}


def out_of_order() -> bytes:
    data = body(True)
    first = ex(0x00080016, "UI", BASE[0x00080016][1])
    second = ex(0x00080018, "UI", BASE[0x00080018][1])
    return part10(data.replace(first + second, second + first))


HAND_BUILT["out of order"] = (out_of_order(), False)
HAND_BUILT["implicit first length like a VR"] = (
    part10(im(0x00080008, b"A" * 0x4141) + body(False), ImplicitVRLittleEndian),
    False,
)


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_files(name: str, tmp_path: Path) -> None:
    data, fast = HAND_BUILT[name]
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    expected = assert_same(path)
    assert (fast_only(path) is not None) == fast, expected[:2]
    if fast:
        assert fast_only(path) == expected[1]


def test_changed_pydicom_hooks_fall_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydicom.hooks import hooks

    path = tmp_path / "f.dcm"
    path.write_bytes(HAND_BUILT["explicit"][0])
    monkeypatch.setattr(hooks, "raw_element_kwargs", {"separator": b":"})
    assert fast_only(path) is None


def test_pydicom_settings_are_followed(
    monkeypatch: pytest.MonkeyPatch, series: dict[str, list[Path]]
) -> None:
    """Values remembered under one pydicom configuration are not reused under another."""
    from pydicom import config

    paths: list[Path | str] = [*series[ExplicitVRLittleEndian], *series[ImplicitVRLittleEndian]]
    paths += pydicom_files()[:40]
    for path in paths:
        assert_same(path)
    before = fastheader._config()
    monkeypatch.setattr(config.settings, "_reading_validation_mode", config.RAISE)
    monkeypatch.setattr(config, "datetime_conversion", True)
    monkeypatch.setattr(config, "use_none_as_empty_text_VR_value", True)
    monkeypatch.setattr(config, "use_DS_decimal", True)
    for path in paths:
        assert_same(path)
    assert fastheader._CONFIG[0] == fastheader._config() != before
