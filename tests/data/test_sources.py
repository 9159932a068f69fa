"""Data sources against real peers: Orthanc (DICOMweb and DIMSE) and a strict SCP.

Fakes appear only beside the real-server tests, for what Orthanc cannot show: the
bearer-token header, a multipart answer without Content-Length, a PACS that
refuses non-hierarchical queries (``strict_scp``).
"""

from __future__ import annotations

import http.server
import io
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from jipkit.config import BasicAuth, BearerAuth, DicomwebSourceConfig, DimseSourceConfig, FolderSourceConfig
from jipkit.data.sources import ConcurrencyLimit, FolderSource, Source, open_source
from jipkit.data.sources.dicomweb import DicomwebSource, json_value
from jipkit.data.sources.dimse import DimseSource
from jipkit.errors import (
    ConfigError,
    NotFoundError,
    PACSAuthError,
    PACSTimeoutError,
    PACSUnavailableError,
    QueryError,
    UnknownKeywordError,
)
from tests.fixtures.orthanc import OrthancData, OrthancServer, free_port
from tests.fixtures.strict_scp import StrictSCP, strict_scp_fixture  # noqa: F401  (the strict_scp fixture)

# --- helpers -----------------------------------------------------------------------------


class CountingSession(requests.Session):
    """A requests session that records URLs and the most requests in flight at once."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.urls: list[str] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            self.urls.append(str(url))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                time.sleep(self.delay)
            return super().request(method, url, *args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


def synthetic(data: OrthancData, modality: str) -> Any:
    """The first synthetic series of a modality (12-slice CT, 10-slice MR)."""
    return next(s for s in data.synthetic if s.modality == modality)


def patient_ids(data: OrthancData) -> set[str | None]:
    return {h["PatientID"] or None for h in data.headers.values()}


def series_with(data: OrthancData, **attrs: str) -> set[str]:
    return {
        str(h["SeriesInstanceUID"]) for h in data.headers.values() if all(h[k] == v for k, v in attrs.items())
    }


def same_dataset(received: Path, original: Path) -> None:
    a, b = pydicom.dcmread(received), pydicom.dcmread(original)
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a == b  # every element outside the file meta, pixel data included


# --- DICOMweb against Orthanc ---------------------------------------------------------------


@pytest.mark.orthanc
def test_dicomweb_echo(orthanc: OrthancServer) -> None:
    with DicomwebSource(orthanc.dicomweb_config()) as src:
        assert isinstance(src, Source)
        src.echo()


@pytest.mark.orthanc
def test_dicomweb_find_studies_pages_through_all(orthanc_loaded: OrthancData) -> None:
    data = orthanc_loaded
    session = CountingSession()
    cfg = data.server.dicomweb_config(page_size=2)
    with DicomwebSource(cfg, session=session) as src:
        rows = src.find("STUDY", {}, ["StudyDate", "PatientName", "NumberOfStudyRelatedInstances"])
    assert {r["StudyInstanceUID"] for r in rows} == data.study_uids
    assert len(rows) == len(data.study_uids)
    # a short page ends the search: n // 2 full pages, then one short (maybe empty)
    pages = [u for u in session.urls if u.endswith("/studies")]
    assert len(pages) == len(data.study_uids) // 2 + 1
    counts = {r["StudyInstanceUID"]: r["NumberOfStudyRelatedInstances"] for r in rows}
    assert counts == {st: sum(len(s) for s in se.values()) for st, se in data.tree.items()}
    assert all(
        set(r)
        == {"PatientID", "StudyInstanceUID", "StudyDate", "PatientName", "NumberOfStudyRelatedInstances"}
        for r in rows
    )


@pytest.mark.orthanc
def test_dicomweb_find_series_images_patients(orthanc_loaded: OrthancData) -> None:
    data = orthanc_loaded
    ct = synthetic(data, "CT")
    with DicomwebSource(data.server.dicomweb_config(page_size=3)) as src:
        series = src.find("SERIES", {}, ["Modality"])
        assert {r["SeriesInstanceUID"] for r in series} == data.series_uids
        mr = src.find("SERIES", {"Modality": "MR"}, ["SeriesDescription", "StudyDate"])
        assert {r["SeriesInstanceUID"] for r in mr} == series_with(data, Modality="MR")
        assert all(r["StudyInstanceUID"] for r in mr)
        in_study = src.find("SERIES", {"StudyInstanceUID": ct.study_uid}, ["Modality"])
        assert {r["SeriesInstanceUID"] for r in in_study} == set(data.tree[ct.study_uid])
        images = src.find(
            "IMAGE",
            {"StudyInstanceUID": ct.study_uid, "SeriesInstanceUID": ct.series_uid},
            ["InstanceNumber", "SliceThickness", "PixelSpacing", "ImageType", "Rows"],
        )
        patients = src.find("PATIENT", {}, ["PatientName"])
    assert {r["SOPInstanceUID"] for r in images} == set(ct.sop_uids)
    first = images[0]
    assert first["PatientID"] == "JIPSYN01"
    assert (first["StudyInstanceUID"], first["SeriesInstanceUID"]) == (ct.study_uid, ct.series_uid)
    assert isinstance(first["InstanceNumber"], int) and isinstance(first["Rows"], int)
    assert first["SliceThickness"] == pytest.approx(2.5)
    assert first["PixelSpacing"] == "0.8\\0.8"
    assert "\\" in first["ImageType"]
    assert {r["PatientID"] for r in patients} == patient_ids(data)
    assert len(patients) == len(patient_ids(data))  # each patient once
    names = {r["PatientID"]: r["PatientName"] for r in patients}
    assert names["JIPSYN03"] == "Müller^Jürgen"


@pytest.mark.orthanc
def test_dicomweb_retrieve_series_is_byte_identical(orthanc_loaded: OrthancData, tmp_path: Path) -> None:
    data = orthanc_loaded
    ct = synthetic(data, "CT")
    seen: list[int] = []
    with DicomwebSource(data.server.dicomweb_config(max_concurrent=4)) as src:
        t0 = time.perf_counter()
        paths = src.retrieve_series(ct.study_uid, ct.series_uid, tmp_path, progress=seen.append)
        elapsed = time.perf_counter() - t0
    assert sorted(p.name for p in paths) == sorted(f"{sop}.dcm" for sop in ct.sop_uids)
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no .part file left
    for p in paths:
        assert p.read_bytes() == data.files[p.name[:-4]].read_bytes()
    assert seen and seen[-1] == len(ct.sop_uids) and seen == sorted(seen)
    assert elapsed < 5


@pytest.mark.orthanc
def test_dicomweb_retrieve_keeps_compressed_syntax(orthanc_loaded: OrthancData, tmp_path: Path) -> None:
    """Orthanc cannot transcode JPEG 2000: only ``transfer-syntax=*`` brings these back."""
    data = orthanc_loaded
    compressed = [
        sop for sop, h in data.headers.items() if h["TransferSyntaxUID"].startswith("1.2.840.10008.1.2.4.9")
    ]
    assert compressed
    with DicomwebSource(data.server.dicomweb_config()) as src:
        for sop in compressed:
            h = data.headers[sop]
            (path,) = src.retrieve_series(str(h["StudyInstanceUID"]), str(h["SeriesInstanceUID"]), tmp_path)
            assert path.read_bytes() == data.files[sop].read_bytes()


@pytest.mark.orthanc
def test_dicomweb_unknown_series_and_bad_uids(orthanc_loaded: OrthancData, tmp_path: Path) -> None:
    with DicomwebSource(orthanc_loaded.server.dicomweb_config()) as src:
        with pytest.raises(NotFoundError, match="holds no instance"):
            src.retrieve_series("1.2.3", "1.2.3.4", tmp_path)
        with pytest.raises(QueryError, match="not a valid"):
            src.retrieve_series("1.2.3", "../../etc", tmp_path)
        with pytest.raises(UnknownKeywordError, match="Modalty"):
            src.find("SERIES", {"Modalty": "CT"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.orthanc
def test_dicomweb_wrong_password(orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORTHANC_TEST_WRONG", "not-the-password")
    auth = BasicAuth(username=orthanc.username, password_env="ORTHANC_TEST_WRONG")
    with DicomwebSource(orthanc.dicomweb_config(auth=auth)) as src:
        with pytest.raises(PACSAuthError) as info:
            src.echo()
        with pytest.raises(PACSAuthError):
            src.find("STUDY", {})
    message = str(info.value)
    assert "ORTHANC_TEST_WRONG" in message and "401" in message
    assert "not-the-password" not in message and orthanc.password not in message
    with DicomwebSource(orthanc.dicomweb_config(auth=None)) as src, pytest.raises(PACSAuthError):
        src.echo()


def test_dicomweb_not_running() -> None:
    cfg = DicomwebSourceConfig(name="down", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    t0 = time.perf_counter()
    with (
        DicomwebSource(cfg) as src,
        pytest.raises(PACSUnavailableError, match=r"cannot reach .*127\.0\.0\.1"),
    ):
        src.echo()
    assert time.perf_counter() - t0 < 2


def test_dicomweb_credentials_in_url_stay_out_of_messages() -> None:
    port = free_port()
    cfg = DicomwebSourceConfig(name="down", url=f"http://user:s3cret@127.0.0.1:{port}/dicom-web")
    with DicomwebSource(cfg) as src, pytest.raises(PACSUnavailableError) as info:
        src.find("STUDY", {})
    assert "s3cret" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.orthanc
def test_dicomweb_concurrency_limit_shared_across_clients(
    orthanc_loaded: OrthancData, tmp_path: Path
) -> None:
    data = orthanc_loaded
    ct, mr = synthetic(data, "CT"), synthetic(data, "MR")
    session = CountingSession(delay=0.02)
    cfg = data.server.dicomweb_config(name="limited", max_concurrent=2)
    (tmp_path / "ct").mkdir()
    (tmp_path / "mr").mkdir()
    # two clients of one server, in two threads, each with its own session and pool
    with (
        DicomwebSource(cfg, session=session) as a,
        DicomwebSource(cfg, session=session) as b,
        ThreadPoolExecutor(2) as pool,
    ):
        fa = pool.submit(a.retrieve_series, ct.study_uid, ct.series_uid, tmp_path / "ct")
        fb = pool.submit(b.retrieve_series, mr.study_uid, mr.series_uid, tmp_path / "mr")
        assert len(fa.result()) == len(ct.sop_uids) and len(fb.result()) == len(mr.sop_uids)
    assert session.max_active == 2  # reached, never exceeded
    assert a._limit is b._limit is ConcurrencyLimit.for_source(f"dicomweb:{cfg.url}", 2)


# --- DICOMweb: what Orthanc cannot show ------------------------------------------------------


def _tiny_dicom() -> tuple[str, bytes]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = SecondaryCaptureImageStorage
    # bytes that look like a boundary start, to trip a careless multipart parser
    ds.ImageComments = "--\r\n--almost-a-boundary"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return str(ds.SOPInstanceUID), buf.getvalue()


class _FakeDicomweb(http.server.BaseHTTPRequestHandler):
    """QIDO-RS lists one instance; WADO-RS sends it as multipart without Content-Length."""

    token = "tok-123"
    seen: ClassVar[list[tuple[str, str | None]]] = []
    sop, body = _tiny_dicom()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/slow/"):
            time.sleep(0.6)  # longer than the client's timeout
            self.close_connection = True
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path.split("?")[0]
        if path.endswith("/instances"):
            sops = [self.sop, "1.2.3.999"] if "/series/9.9/" in path else [self.sop]
            payload = json.dumps([{"00080018": {"vr": "UI", "Value": [sop]}} for sop in sops]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif path.endswith("1.2.3.999"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.endswith(self.sop):
            boundary = "fake-boundary"
            self.send_response(200)
            self.send_header(
                "Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}'
            )
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            for i in range(0, len(self.body), 7):  # dribble it out in small pieces
                self.wfile.write(self.body[i : i + 7])
            self.wfile.write(f"\r\n--{boundary}--\r\n".encode())
        else:
            payload = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)


@pytest.fixture
def fake_dicomweb() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDicomweb)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _FakeDicomweb.seen.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dicomweb_bearer_token_goes_in_the_header(
    fake_dicomweb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PACS_TOKEN", _FakeDicomweb.token)
    cfg = DicomwebSourceConfig(name="fake", url=fake_dicomweb, auth=BearerAuth(token_env="FAKE_PACS_TOKEN"))
    with DicomwebSource(cfg) as src:
        src.echo()
        (path,) = src.retrieve_series("1.2.3", "1.2.3.4", tmp_path)
    assert path.read_bytes() == _FakeDicomweb.body
    assert all(auth == "Bearer tok-123" for _, auth in _FakeDicomweb.seen)
    assert all("tok-123" not in p for p, _ in _FakeDicomweb.seen)
    monkeypatch.setenv("FAKE_PACS_TOKEN", "expired")
    with DicomwebSource(cfg) as src, pytest.raises(PACSAuthError) as info:
        src.echo()
    assert "expired" not in str(info.value)


def test_dicomweb_failed_instance_leaves_no_part_file(
    fake_dicomweb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PACS_TOKEN", _FakeDicomweb.token)
    cfg = DicomwebSourceConfig(name="fake", url=fake_dicomweb, auth=BearerAuth(token_env="FAKE_PACS_TOKEN"))
    with DicomwebSource(cfg) as src, pytest.raises(PACSUnavailableError, match=r"1\.2\.3\.999.*503"):
        src.retrieve_series("1.2.3", "9.9", tmp_path)
    assert not list(tmp_path.glob("*.part"))
    assert {p.name for p in tmp_path.iterdir()} <= {f"{_FakeDicomweb.sop}.dcm"}


def test_dicomweb_tls_uses_the_site_ca_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "site-ca.pem", tmp_path / "key.pem"
    args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1"
    args += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run([openssl, *args.split(), "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDicomweb)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("FAKE_PACS_TOKEN", _FakeDicomweb.token)
    url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
    auth = BearerAuth(token_env="FAKE_PACS_TOKEN")
    try:
        untrusted = DicomwebSourceConfig(name="tls", url=url, auth=auth)
        with DicomwebSource(untrusted) as src, pytest.raises(PACSUnavailableError, match="ca_bundle"):
            src.echo()
        with DicomwebSource(untrusted.model_copy(update={"ca_bundle": cert})) as src:
            src.echo()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dicomweb_timeout(fake_dicomweb: str) -> None:
    url = fake_dicomweb.replace("/dicom-web", "/slow/dicom-web")
    t0 = time.perf_counter()
    with (
        DicomwebSource(DicomwebSourceConfig(name="slow", url=url, timeout=0.2)) as src,
        pytest.raises(PACSTimeoutError, match=r"did not answer within 0\.2 s"),
    ):
        src.echo()
    assert time.perf_counter() - t0 < 0.55


def test_json_value_conversions() -> None:
    assert json_value(
        {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]}
    ) == ("Yamada^Tarou=山田^太郎")
    assert json_value({"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]}) == "A^B\\C^D"
    assert json_value({"vr": "IS", "Value": [7]}) == 7
    assert json_value({"vr": "DS", "Value": ["2.50"]}) == 2.5
    assert json_value({"vr": "DS", "Value": [-72.2, -143.0, 3.7625]}) == "-72.2\\-143\\3.7625"
    assert json_value({"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}) == "ORIGINAL\\PRIMARY"
    assert json_value({"vr": "DA"}) is None
    assert json_value({"vr": "SQ", "Value": [{}]}) is None


# --- DIMSE against Orthanc ---------------------------------------------------------------------


@pytest.mark.orthanc
def test_dimse_echo(orthanc: OrthancServer) -> None:
    src = DimseSource(orthanc.dimse_config())
    assert isinstance(src, Source)
    src.echo()


@pytest.mark.orthanc
def test_dimse_find_levels(orthanc_loaded: OrthancData) -> None:
    data = orthanc_loaded
    ct = synthetic(data, "CT")
    src = DimseSource(data.server.dimse_config())
    studies = src.find("STUDY", {}, ["StudyDate", "PatientName"])
    assert {r["StudyInstanceUID"] for r in studies} == data.study_uids
    patients = src.find("PATIENT", {}, ["PatientName"])
    assert {r["PatientID"] for r in patients} == patient_ids(data)
    assert {r["PatientName"] for r in patients if r["PatientID"] == "JIPSYN03"} == {"Müller^Jürgen"}
    mr = src.find("SERIES", {"Modality": "MR"}, ["SeriesDescription", "StudyDate"])
    assert {r["SeriesInstanceUID"] for r in mr} == series_with(data, Modality="MR")
    assert all(r["StudyDate"] and r["StudyInstanceUID"] for r in mr)  # merged from the STUDY level
    images = src.find("IMAGE", {"SeriesInstanceUID": ct.series_uid}, ["InstanceNumber", "PixelSpacing"])
    assert {r["SOPInstanceUID"] for r in images} == set(ct.sop_uids)
    assert all(r["PatientID"] == "JIPSYN01" and r["StudyInstanceUID"] == ct.study_uid for r in images)
    assert {r["PixelSpacing"] for r in images} == {"0.8\\0.8"}


@pytest.mark.orthanc
def test_dimse_and_dicomweb_agree(orthanc_loaded: OrthancData) -> None:
    data = orthanc_loaded
    ct = synthetic(data, "CT")
    keys = {"StudyInstanceUID": ct.study_uid, "SeriesInstanceUID": ct.series_uid}
    fields = ["InstanceNumber", "ImagePositionPatient", "SliceThickness", "Rows", "PatientName", "StudyDate"]
    via_dimse = DimseSource(data.server.dimse_config()).find("IMAGE", keys, fields)
    with DicomwebSource(data.server.dicomweb_config()) as src:
        via_web = src.find("IMAGE", keys, fields)

    def by_sop(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {r["SOPInstanceUID"]: r for r in rows}

    assert by_sop(via_dimse) == by_sop(via_web)


@pytest.mark.orthanc
def test_dimse_retrieve_series(orthanc_loaded: OrthancData, tmp_path: Path) -> None:
    data = orthanc_loaded
    src = DimseSource(data.server.dimse_config())
    for info in data.synthetic:  # uncompressed, RLE and JPEG-LS series
        dest = tmp_path / info.series_uid
        dest.mkdir()
        seen: list[int] = []
        paths = src.retrieve_series(info.study_uid, info.series_uid, dest, progress=seen.append)
        assert sorted(p.name for p in paths) == sorted(f"{sop}.dcm" for sop in info.sop_uids)
        assert sorted(dest.iterdir()) == sorted(paths)
        assert seen[-1] == len(info.sop_uids)
        for p in paths:
            same_dataset(p, data.files[p.name[:-4]])


@pytest.mark.orthanc
def test_dimse_unknown_aets_are_refused(orthanc: OrthancServer) -> None:
    with pytest.raises(PACSAuthError, match=r"calling AE title not recognised.*'INTRUDER'"):
        DimseSource(orthanc.dimse_config(calling_aet="INTRUDER")).echo()
    with pytest.raises(PACSAuthError, match="called AE title not recognised"):
        DimseSource(orthanc.dimse_config(called_aet="NOTORTHANC")).find("STUDY", {})


def test_dimse_not_running() -> None:
    cfg = DimseSourceConfig(name="down", host="127.0.0.1", port=free_port(), called_aet="PACS", timeout=5)
    t0 = time.perf_counter()
    with pytest.raises(PACSUnavailableError, match=r"cannot connect.*127\.0\.0\.1"):
        DimseSource(cfg).echo()
    assert time.perf_counter() - t0 < 2


# --- DIMSE against a strict PACS ----------------------------------------------------------------


def test_strict_scp_refuses_a_flat_series_query(strict_scp: StrictSCP) -> None:
    """The fixture is as strict as promised: pynetdicom alone gets 0xA900."""
    ae = AE(ae_title=strict_scp.calling_aet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(strict_scp.host, strict_scp.port, ae_title=strict_scp.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.Modality = "CT"
    query.SeriesInstanceUID = ""
    statuses = [
        int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
    ]
    assoc.release()
    assert statuses == [0xA900]


def test_dimse_find_walks_the_hierarchy(strict_scp: StrictSCP) -> None:
    strict_scp.reset()
    src = DimseSource(strict_scp.config())
    rows = src.find("SERIES", {"Modality": "CT"}, ["SeriesDescription"])
    expected = {str(d.SeriesInstanceUID) for d in strict_scp.datasets if d.Modality == "CT"}
    assert {r["SeriesInstanceUID"] for r in rows} == expected
    assert all(r["PatientID"] and r["StudyInstanceUID"] and r["Modality"] == "CT" for r in rows)
    assert strict_scp.refused == []
    levels = [level for level, _ in strict_scp.queries]
    n_studies = len({str(d.StudyInstanceUID) for d in strict_scp.datasets})
    assert levels == ["STUDY"] + ["SERIES"] * n_studies


def test_dimse_image_query_takes_upper_keys_upstairs(strict_scp: StrictSCP) -> None:
    strict_scp.reset()
    src = DimseSource(strict_scp.config())
    rows = src.find(
        "IMAGE",
        {"PatientID": "STRICT01", "StudyDate": "20200101-20201231", "Modality": "MR"},
        ["InstanceNumber"],
    )
    expected = {
        str(d.SOPInstanceUID)
        for d in strict_scp.datasets
        if d.PatientID == "STRICT01" and d.StudyDate.startswith("2020") and d.Modality == "MR"
    }
    assert expected and {r["SOPInstanceUID"] for r in rows} == expected
    assert all(r["StudyDate"] == "20200101" and r["PatientID"] == "STRICT01" for r in rows)
    assert isinstance(rows[0]["InstanceNumber"], int)
    assert strict_scp.refused == []
    study_queries = [keys for level, keys in strict_scp.queries if level == "STUDY"]
    assert study_queries and study_queries[0]["StudyDate"] == "20200101-20201231"
    assert all("StudyDate" not in keys for level, keys in strict_scp.queries if level != "STUDY")


def test_dimse_reactor_cannot_steal_responses(strict_scp: StrictSCP) -> None:
    """pynetdicom's reactor thread may wake between two C-FINDs and drop a response."""
    src = DimseSource(strict_scp.config())
    with src._associate([build_context(StudyRootQueryRetrieveInformationModelFind)], "test") as (assoc, _):
        response = C_FIND()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0xFF00
        assoc.dimse.msg_queue.put((1, response))
        assert assoc.dimse.get_msg(block=False) == (None, None)  # what the reactor calls
        assert assoc.dimse.get_msg(block=True) == (1, response)  # what send_c_find calls


def test_dimse_retrieve_from_strict_scp(strict_scp: StrictSCP, tmp_path: Path) -> None:
    first = strict_scp.datasets[0]
    wanted = [d for d in strict_scp.datasets if d.SeriesInstanceUID == first.SeriesInstanceUID]
    paths = DimseSource(strict_scp.config()).retrieve_series(
        str(first.StudyInstanceUID), str(first.SeriesInstanceUID), tmp_path
    )
    assert sorted(p.name for p in paths) == sorted(f"{d.SOPInstanceUID}.dcm" for d in wanted)
    for p in paths:
        ds = pydicom.dcmread(p)
        original = next(d for d in wanted if d.SOPInstanceUID == ds.SOPInstanceUID)
        assert ds.PixelData == original.PixelData and ds.PatientID == original.PatientID


def test_dimse_concurrency_limit(strict_scp: StrictSCP) -> None:
    strict_scp.reset()
    strict_scp.delay = 0.05
    try:
        cfg = strict_scp.config(name="strict-limited", max_concurrent=2)
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: DimseSource(cfg).find("STUDY", {}), range(6)))
        most = strict_scp.max_active
    finally:
        strict_scp.reset()
    assert all(len(r) == 3 for r in results)
    assert most == 2  # reached, never exceeded


def test_dimse_timeout(strict_scp: StrictSCP) -> None:
    strict_scp.reset()
    strict_scp.delay = 1.0
    try:
        t0 = time.perf_counter()
        with pytest.raises(PACSTimeoutError, match=r"did not answer within 0\.3 s"):
            DimseSource(strict_scp.config(timeout=0.3)).find("STUDY", {})
        assert time.perf_counter() - t0 < 0.95  # gave up before the answer came
    finally:
        time.sleep(0.8)  # let the stuck handler finish
        strict_scp.reset()


# --- folders and the factory ---------------------------------------------------------------------


def test_folder_source(tmp_path: Path) -> None:
    src = FolderSource(FolderSourceConfig(name="exports", path=tmp_path))
    src.echo()
    with pytest.raises(QueryError, match="jip index"):
        src.find("STUDY", {})
    with pytest.raises(QueryError, match="jip index"):
        src.retrieve_series("1.2", "1.2.3", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSource(FolderSourceConfig(name="gone", path=tmp_path / "missing")).echo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        FolderSource(FolderSourceConfig(name="file", path=tmp_path / "file")).echo()


def test_open_source_by_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = open_source(FolderSourceConfig(name="f", path=tmp_path))
    dimse = open_source(DimseSourceConfig(name="d", host="127.0.0.1", port=104, called_aet="PACS"))
    web = open_source(DicomwebSourceConfig(name="w", url="http://127.0.0.1:1/dicom-web"))
    assert isinstance(folder, FolderSource) and isinstance(dimse, DimseSource)
    assert isinstance(web, DicomwebSource)
    assert all(isinstance(s, Source) for s in (folder, dimse, web))
    web.close()
    monkeypatch.delenv("UNSET_PACS_PASSWORD", raising=False)
    auth = BasicAuth(username="u", password_env="UNSET_PACS_PASSWORD")
    with pytest.raises(ConfigError, match="UNSET_PACS_PASSWORD"):
        open_source(DicomwebSourceConfig(name="w", url="http://127.0.0.1:1", auth=auth))
