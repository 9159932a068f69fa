"""A site whose data lives in a real Orthanc: sync, live queries, loading through the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

import jipkit as jip
from jipkit.config import SiteConfig
from jipkit.data.synth import write_series
from tests.fixtures.orthanc import OrthancData, free_port

pytestmark = pytest.mark.orthanc


def make_site(tmp_path: Path, data: OrthancData, kind: str, **overrides: object) -> jip.Site:
    srv = data.server
    source = srv.dicomweb_config(**overrides) if kind == "dicomweb" else srv.dimse_config(**overrides)
    return jip.connect(
        SiteConfig(
            name="pacs-site", index_path=tmp_path / "i.sqlite", cache_dir=tmp_path / "cache", sources=[source]
        )
    )


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_sync_then_query_and_load(tmp_path: Path, orthanc_loaded: OrthancData, kind: str) -> None:
    site = make_site(tmp_path, orthanc_loaded, kind)
    report = site.sync(progress=False)
    assert report.series_seen == len(orthanc_loaded.series_uids)
    assert report.instances == len(orthanc_loaded.files)
    assert set(site.find_series().SeriesInstanceUID) == orthanc_loaded.series_uids
    assert set(site.find_instances().SOPInstanceUID) == set(orthanc_loaded.files)
    # a second sync reads nothing again
    again = site.sync(progress=False)
    assert again.series_updated == 0 and again.series_removed == 0

    ct = orthanc_loaded.synthetic[0]
    found = site.find_series(Modality="CT", PatientName="synthetic^one")
    assert found.SeriesInstanceUID.tolist() == [ct.series_uid]
    vol = site.load_series(ct.series_uid)  # retrieved into the cache, then loaded
    np.testing.assert_array_equal(vol.array, ct.expected)
    np.testing.assert_allclose(vol.affine, ct.affine, atol=1e-4)
    assert ct.series_uid in site.cache
    assert all(str(site.cache.path(ct.series_uid)) in loc for loc in vol.locations)


def test_incremental_sync_sees_new_and_deleted_series(tmp_path: Path, orthanc_loaded: OrthancData) -> None:
    srv = orthanc_loaded.server
    site = make_site(tmp_path, orthanc_loaded, "dicomweb")
    site.sync(progress=False)
    extra = write_series(tmp_path / "extra", shape=(3, 8, 8), seed=777, patient={"PatientID": "JIPEXTRA"})
    srv.upload(extra.paths)
    try:
        report = site.sync(progress=False)
        assert report.series_updated == 1 and report.instances == 3
        assert site.find_series(PatientID="JIPEXTRA").SeriesInstanceUID.tolist() == [extra.series_uid]
    finally:
        found = requests.post(f"{srv.url}/tools/lookup", data=extra.series_uid, auth=srv.auth, timeout=10)
        for item in found.json():
            requests.delete(f"{srv.url}{item['Path']}", auth=srv.auth, timeout=10).raise_for_status()
    gone = site.sync(progress=False)
    assert gone.series_removed == 1
    assert site.find_series(PatientID="JIPEXTRA").empty


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_live_queries_ask_the_pacs(tmp_path: Path, orthanc_loaded: OrthancData, kind: str) -> None:
    site = make_site(tmp_path, orthanc_loaded, kind)  # nothing indexed: only the PACS knows
    assert site.find_series().empty
    live = site.find_series(live=True, Modality="MR")
    expected = {se for se, _ in _series_with(orthanc_loaded, "MR")}
    assert set(live.SeriesInstanceUID) == expected
    studies = site.find_studies(live=True, StudyDate="20200101-20201231")
    assert len(studies) >= 2 and set(studies.StudyDate) <= {"20200101", "20200102"}


def _series_with(data: OrthancData, modality: str) -> list[tuple[str, str]]:
    out = []
    for study, series in data.tree.items():
        for se, sops in series.items():
            if data.headers[sops[0]]["Modality"] == modality:
                out.append((se, study))
    return out


def test_pacs_down_is_a_clear_error(tmp_path: Path, orthanc_loaded: OrthancData) -> None:
    port = free_port()
    site = make_site(tmp_path, orthanc_loaded, "dicomweb", url=f"http://127.0.0.1:{port}/dicom-web")
    with pytest.raises(jip.PACSUnavailableError) as err:
        site.sync(progress=False)
    assert str(port) in str(err.value)
    assert orthanc_loaded.server.password not in str(err.value)


def test_wrong_credentials_are_a_clear_error(
    tmp_path: Path, orthanc_loaded: OrthancData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIP_TEST_WRONG_PASSWORD", "wrong")
    from jipkit.config import BasicAuth

    auth = BasicAuth(username=orthanc_loaded.server.username, password_env="JIP_TEST_WRONG_PASSWORD")
    site = make_site(tmp_path, orthanc_loaded, "dicomweb", auth=auth)
    with pytest.raises(jip.PACSAuthError):
        site.find_series(live=True)


def test_failed_retrieval_caches_nothing(tmp_path: Path, orthanc_loaded: OrthancData) -> None:
    site = make_site(tmp_path, orthanc_loaded, "dicomweb")
    site.sync(progress=False)
    ct = orthanc_loaded.synthetic[0]
    down = make_site(tmp_path, orthanc_loaded, "dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(jip.PACSUnavailableError):
        down.load_series(ct.series_uid)
    assert ct.series_uid not in down.cache
    np.testing.assert_array_equal(site.load_series(ct.series_uid).array, ct.expected)
