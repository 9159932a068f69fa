"""The data channel in one process: the runner's DataServer and the kernel's RemoteSite."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest

import jipkit as jip
from jipkit.data.remote import MAX_REQUEST_BYTES, ChannelError, RemoteSite, decode_keys, encode_keys
from jipkit.data.site import Site, connect
from jipkit.errors import DicomFileError, PACSTimeoutError
from jipkit.site.dataserver import HIDDEN_COLUMNS, DataServer, _error, _scrub
from tests.site.sandbox.conftest import Archive


@pytest.fixture
def served(archive: Archive, short_dir: Path) -> Iterator[tuple[DataServer, RemoteSite]]:
    with DataServer(archive.site(), short_dir / "data.sock", label="t") as server:
        remote = RemoteSite(server.path, timeout=30)
        yield server, remote
        remote.close()


def ask(path: Path, payload: bytes) -> dict[str, object]:
    """Send one raw frame; the answer's header (or {} when the server closed)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(struct.pack(">Q", len(payload)) + payload)
        head = s.recv(8)
        if len(head) < 8:
            return {}
        (n,) = struct.unpack(">Q", head)
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        value = json.loads(body)
        assert isinstance(value, dict)
        return value


def test_queries_answer_what_the_index_answers_without_locations(
    served: tuple[DataServer, RemoteSite], archive: Archive
) -> None:
    _, remote = served
    local = archive.site()
    for method in ("find_patients", "find_studies", "find_series", "find_instances"):
        here = getattr(local, method)()
        there = getattr(remote, method)()
        expected = here.drop(columns=[c for c in here.columns if c in HIDDEN_COLUMNS])
        pd.testing.assert_frame_equal(there, expected, check_dtype=True)
    by_name = remote.find_patients(PatientName="müller^jürgen")
    assert list(by_name.PatientID) == ["00012345"]
    ranged = remote.find_series(NumberOfSeriesRelatedInstances=(None, 7), SeriesDate=None)  # CT 6, MR 8
    assert list(ranged.SeriesInstanceUID) == [archive.ct.series_uid]
    either = remote.find_series(Modality=["CT", "MR"], StudyDate="1900-2100")
    assert len(either) == 2 and either.NumberOfSeriesRelatedInstances.dtype == np.int64


def test_a_series_comes_back_as_the_same_volume_without_its_files(
    served: tuple[DataServer, RemoteSite], archive: Archive
) -> None:
    server, remote = served
    local = archive.site().load_series(archive.ct.series_uid)
    vol = remote.load_series(archive.ct.series_uid)
    assert vol.array.dtype == local.array.dtype and np.array_equal(vol.array, archive.ct.expected)
    assert vol.spacing == local.spacing and np.array_equal(vol.affine, local.affine)
    assert np.array_equal(vol.positions, local.positions) and vol.sop_instance_uids == local.sop_instance_uids
    assert (vol.series_instance_uid, vol.study_instance_uid, vol.modality) == (
        local.series_instance_uid,
        local.study_instance_uid,
        "CT",
    )
    assert vol.locations == [] and local.locations  # no paths cross the channel
    echoes = remote.load_series(archive.mr.series_uid, split_by="EchoNumbers")
    assert sorted(echoes) == [1, 2] and echoes[1].shape == (4, 16, 16)
    remote.load_series(archive.ct.series_uid)
    assert server.series_read == [archive.ct.series_uid, archive.mr.series_uid]  # once each, in order
    assert [uid for uid, _ in remote.iter_series([archive.ct.series_uid], progress=False)] == [
        archive.ct.series_uid
    ]


def test_errors_keep_their_kind_and_lose_their_paths(
    served: tuple[DataServer, RemoteSite], archive: Archive
) -> None:
    _, remote = served
    with pytest.raises(jip.NotFoundError, match=r"No series 1\.2\.3"):
        remote.load_series("1.2.3")
    with pytest.raises(jip.UnknownKeywordError):
        remote.find_series(NotAKeyword="x")
    with pytest.raises(jip.QueryError, match="Live PACS"):
        remote.find_series(live=True)
    with pytest.raises(jip.AmbiguousSeriesError) as err:
        remote.load_series(archive.mr.series_uid)
    assert err.value.attribute == "EchoNumbers" and sorted(err.value.values) == [1, 2]  # type: ignore[type-var]
    with pytest.raises(AttributeError, match="not available to a notebook run by the site's runner"):
        remote.sync  # noqa: B018
    broken = _error(DicomFileError(f"Could not read {archive.folder}/ct/x.dcm: truncated"))
    assert broken["error"] == "DicomFileError" and str(archive.folder) not in json.dumps(broken)
    assert _error(PACSTimeoutError("pacs.hospital.local:104 did not answer"))["error"] == "PACSTimeoutError"
    assert "hospital.local" not in json.dumps(_error(PACSTimeoutError("pacs.hospital.local:104")))
    assert _error(ValueError("/secret/path"))["message"] == (
        "The site could not answer this request; its log has the details."
    )
    assert _scrub("at /data/ab/cd/x.dcm: bad, and 2020/01/01 and/or /etc/x") == (
        "at <path>: bad, and 2020/01/01 and/or <path>"
    )


def test_only_the_narrow_protocol_is_answered(
    served: tuple[DataServer, RemoteSite], archive: Archive
) -> None:
    server, remote = served

    def request(op: str, **args: object) -> dict[str, object]:
        return ask(server.path, json.dumps({"v": 1, "op": op, "args": args}).encode())

    for op in ("sync", "index_paths", "index_errors", "lazy_series", "__init__", "source"):
        answer = request(op)
        assert (answer["ok"], answer["error"]) == (False, "QueryError"), op
    for keys in ({"live": True}, {"source": "pacs"}, {"ignore_case": True}, {"bad key": 1}):
        answer = request("find_series", keys=keys)
        assert answer["ok"] is False and answer["error"] == "QueryError", keys
    assert request("load_series", series_uid="1" * 200)["error"] == "QueryError"
    assert request("load_series", series_uid=archive.ct.series_uid, split_by="x; y")["error"] == "QueryError"
    assert request("find_series", keys={"Modality": {"pickle": "gASV"}})["error"] == "QueryError"
    assert ask(server.path, b"not json")["error"] == "QueryError"
    assert ask(server.path, json.dumps({"v": 2, "op": "find_series", "args": {}}).encode())["ok"] is False
    with socket.socket(socket.AF_UNIX) as s:  # a frame longer than allowed: refused, then closed
        s.settimeout(10)
        s.connect(str(server.path))
        s.sendall(struct.pack(">Q", MAX_REQUEST_BYTES + 1))
        (n,) = struct.unpack(">Q", s.recv(8, socket.MSG_WAITALL))
        assert json.loads(s.recv(n, socket.MSG_WAITALL))["error"] == "QueryError"
        assert s.recv(1) == b""
    assert len(remote.find_series()) == 2  # the server still serves
    assert server.series_read == []


def test_the_socket_is_private_and_the_client_refuses_bad_answers(archive: Archive, short_dir: Path) -> None:
    owner = (os.getuid(), os.getgid())
    with DataServer(archive.site(), short_dir / "data.sock", owner=owner) as server:
        st = server.path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == owner
    assert not server.path.exists()  # removed when the run ends
    with pytest.raises(ChannelError, match="Cannot reach"):
        RemoteSite(short_dir / "data.sock").find_series()
    liar = socket.socket(socket.AF_UNIX)  # a server that answers with an object array
    liar.bind(str(short_dir / "liar.sock"))
    liar.listen()

    def answer() -> None:
        conn, _ = liar.accept()
        with conn:
            (n,) = struct.unpack(">Q", conn.recv(8, socket.MSG_WAITALL))
            conn.recv(n, socket.MSG_WAITALL)
            volume = {"dtype": "|O", "shape": [1], "nbytes": 8}
            body = json.dumps({"v": 1, "ok": True, "kind": "volume", "volume": volume}).encode()
            conn.sendall(struct.pack(">Q", len(body)) + body + struct.pack(">Q", 8) + b"\0" * 8)

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(ChannelError, match="malformed volume"):
            RemoteSite(short_dir / "liar.sock", timeout=10).load_series("1.2.3")
    finally:
        t.join()
        liar.close()


def test_query_values_cross_as_tagged_json() -> None:
    import datetime as dt

    keys = {
        "StudyDate": dt.date(2020, 1, 31),
        "SeriesNumber": (1, None),
        "Modality": {"CT"},
        "n": np.int64(3),
    }
    wire = json.loads(json.dumps(encode_keys(keys)))
    assert wire == {
        "StudyDate": {"date": "2020-01-31"},
        "SeriesNumber": {"tuple": [1, None]},
        "Modality": ["CT"],
        "n": 3,
    }
    assert decode_keys(wire) == {
        "StudyDate": dt.date(2020, 1, 31),
        "SeriesNumber": (1, None),
        "Modality": ["CT"],
        "n": 3,
    }
    with pytest.raises(jip.QueryError):
        encode_keys({"x": object()})
    with pytest.raises(ValueError):
        decode_keys({"x": {"eval": "1"}})


def test_connect_returns_the_channel_in_a_run_and_the_site_otherwise(
    monkeypatch: pytest.MonkeyPatch, archive: Archive, short_dir: Path
) -> None:
    monkeypatch.setenv("JIPKIT_DATA_SOCKET", str(short_dir / "data.sock"))
    assert isinstance(connect(), RemoteSite)
    assert isinstance(connect(archive.config), Site)  # an explicit configuration wins
    monkeypatch.delenv("JIPKIT_DATA_SOCKET")
    monkeypatch.delenv("JIP_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(short_dir))  # no user configuration
    assert isinstance(connect(index_path=archive.config.index_path), Site)


def test_a_failing_read_is_an_error_answer_that_names_no_path(short_dir: Path) -> None:
    class Broken:
        def load_series(self, series_uid: str, split_by: str | None = None) -> object:
            raise FileNotFoundError(2, "No such file", "/data/hospital/Müller/ct/1.dcm")

    with DataServer(cast(Site, Broken()), short_dir / "data.sock") as server:
        remote = RemoteSite(server.path, timeout=10)
        with pytest.raises(jip.JipError, match="could not answer this request") as err:
            remote.load_series("1.2.3")
        assert "Müller" not in str(err.value) and not isinstance(err.value, ChannelError)
        remote.close()
    assert server.series_read == [] and server.requests == 1
