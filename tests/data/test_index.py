"""Indexing: pydicom's test files, character sets, duplicates, bad files, incremental re-index."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file

import jipkit as jip
from jipkit.config import SiteConfig

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> jip.Site:
    """pydicom's test files and character-set files, indexed once."""
    tmp = tmp_path_factory.mktemp("idx")
    site = jip.connect(SiteConfig(index_path=tmp / "i.sqlite", cache_dir=tmp / "c", workers=2))
    charsets = Path(get_charset_files("chrGreek.dcm")[0]).parent
    site.index_paths([TEST_FILES, charsets], progress=False)
    return site


def test_every_readable_file_is_indexed_and_the_rest_recorded(indexed: jip.Site) -> None:
    counts = indexed.index.counts()
    errors = indexed.index_errors()
    assert counts["files"] == counts["instances"] + len(errors)  # one row per readable file
    assert set(errors.reason) <= {"not_dicom", "no_sop_instance_uid", "no_hierarchy", "truncated", "corrupt"}
    assert (errors.reason == "not_dicom").any()


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("chrJapMulti.dcm", "やまだ^たろう"),
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
        ("chrGreek.dcm", "Διονυσιος"),
        ("chrHbrw.dcm", "שרון^דבורה"),
        ("chrFren.dcm", "Buc^Jérôme"),
        ("chrRuss.dcm", "Люкceмбypг"),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
    ],
)
def test_names_decoded_per_specific_character_set(indexed: jip.Site, file: str, name: str) -> None:
    path = get_charset_files(file)[0]
    rows = indexed.find_instances(SOPInstanceUID=pydicom.dcmread(path).SOPInstanceUID)
    patient = indexed.find_patients(
        PatientID=indexed.find_series(SeriesInstanceUID=rows.SeriesInstanceUID.iloc[0]).PatientID.iloc[0]
    )
    assert name in set(patient.PatientName)


def test_person_name_query_finds_ideographic_group(indexed: jip.Site) -> None:
    found = indexed.find_patients(PatientName="山田^太郎")
    assert "Yamada^Tarou=山田^太郎=やまだ^たろう" in set(found.PatientName)


def test_duplicate_sop_instance_uids_are_flagged(indexed: jip.Site) -> None:
    inst = indexed.find_instances()
    dup = inst[inst.Duplicates > 0]
    assert not dup.empty
    counts = dup.groupby("SOPInstanceUID").size()
    assert (counts >= 2).all()
    assert (dup.groupby("SOPInstanceUID").location.nunique() == counts).all()


def test_series_counts_and_derived_keys(indexed: jip.Site) -> None:
    series = indexed.find_series(Modality="CT")
    assert (series.Modality == "CT").all()
    inst = indexed.find_instances(Modality="CT")
    expected = inst.groupby("SeriesInstanceUID").SOPInstanceUID.nunique()
    got = series.set_index("SeriesInstanceUID").NumberOfSeriesRelatedInstances
    assert got.sort_index().tolist() == expected.sort_index().tolist()
    big = indexed.find_series(NumberOfSeriesRelatedInstances="4-")
    assert (big.NumberOfSeriesRelatedInstances >= 4).all() and len(big) >= 1
    studies = indexed.find_studies(ModalitiesInStudy="MR")
    assert all("MR" in m.split("\\") for m in studies.ModalitiesInStudy)


def test_keys_of_lower_levels_select_parents(indexed: jip.Site) -> None:
    patients = indexed.find_patients(Modality="MR")
    mr = indexed.find_series(Modality="MR")
    assert set(patients.PatientID) == set(mr.PatientID)


def test_unknown_keyword_suggests(indexed: jip.Site) -> None:
    with pytest.raises(jip.UnknownKeywordError, match="Did you mean Modality"):
        indexed.find_series(Modalty="CT")
    with pytest.raises(jip.UnknownKeywordError, match="does not hold it"):
        indexed.find_series(KVP="120")
    with pytest.raises(KeyError):  # also a KeyError, as a Python user expects
        indexed.find_studies(StudyDat="2020")


def _series_files(dest: Path, n: int, rows: int = 8) -> list[Path]:
    """n small single-slice files of one series, written with pydicom."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = "00000042", "Test^Ingest"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = bytes(rows * rows * 2)
        p = dest / f"{k:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def test_incremental_reindex_notices_changes_and_removals(tmp_site: SiteConfig, tmp_path: Path) -> None:
    site = jip.connect(tmp_site)
    folder = tmp_path / "export"
    files = _series_files(folder, 6)
    (folder / "notes.txt").write_text("skipped: never DICOM")
    (folder / "README").write_text("not DICOM")
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(files[0].read_bytes()[:-40])
    first = site.index_paths([folder], progress=False)
    assert (first.added, first.unchanged, len(first.failed)) == (6, 0, 2)
    assert {r for _, r, _ in first.failed} == {"not_dicom", "truncated"}
    again = site.index_paths([folder], progress=False)
    assert (again.added, again.unchanged, len(again.failed)) == (0, 8, 0)
    # change one file (new pixel data size), remove another
    ds = pydicom.dcmread(files[1])
    ds.SeriesDescription = "changed"
    time.sleep(0.01)
    ds.save_as(files[1])
    files[2].unlink()
    third = site.index_paths([folder], progress=False)
    assert (third.updated, third.removed, third.unchanged) == (1, 1, 6)
    series = site.find_series(PatientID="00000042")
    assert series.NumberOfSeriesRelatedInstances.tolist() == [5]
    assert series.SeriesDescription.tolist() == ["changed"]
    shutil.rmtree(folder)
    gone = site.index_paths([folder], progress=False)  # a missing root (an unmounted share?) is
    assert gone.failed[0][1] == "missing"  # reported, and its files are kept
    assert not site.find_series(PatientID="00000042").empty
    (folder).mkdir()
    site.index_paths([folder], progress=False)
    assert site.find_series(PatientID="00000042").empty  # an emptied folder forgets its files


@pytest.mark.slow
def test_interrupted_ingest_loses_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    _series_files(folder, 2500, rows=4)
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'index_path = "{tmp_path / "i.sqlite"}"\nworkers = 1\n')
    env = {**os.environ, "JIP_CONFIG": str(cfg)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jipkit.cli", "-q", "index", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "i.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some batches have landed, then kill
        try:
            with sqlite3.connect(db, timeout=5) as con:
                if con.execute("SELECT COUNT(*) FROM files").fetchone()[0] >= 500:
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        landed = con.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        files = con.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert 500 <= landed < 2500 and landed == files
    site = jip.connect(cfg)
    report = site.index_paths([folder], progress=False)
    assert report.unchanged == landed and report.added == 2500 - landed
    assert site.find_series(PatientID="00000042").NumberOfSeriesRelatedInstances.tolist() == [2500]


def test_parallel_ingest_gives_the_same_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jipkit.data import ingest

    folder = tmp_path / "many"
    _series_files(folder, 300, rows=4)
    (folder / "junk.dcm").write_bytes(b"junk")
    serial = jip.connect(SiteConfig(index_path=tmp_path / "a.sqlite", workers=1))
    r1 = serial.index_paths([folder], progress=False)
    monkeypatch.setattr(ingest, "_PARALLEL_MIN", 10)  # force the worker pool
    parallel = jip.connect(SiteConfig(index_path=tmp_path / "b.sqlite", workers=2))
    r2 = parallel.index_paths([folder], progress=False)
    assert (r1.added, len(r1.failed)) == (r2.added, len(r2.failed)) == (300, 1)
    a = serial.find_instances().drop(columns=["location"]).sort_values("SOPInstanceUID")
    b = parallel.find_instances().drop(columns=["location"]).sort_values("SOPInstanceUID")
    assert a.reset_index(drop=True).equals(b.reset_index(drop=True))
