"""Loading series as volumes: order, geometry, rescale, irregular series, fast path.

Geometry is checked against the generator's own truth and against an independent
reader (SimpleITK) on generated series and on pydicom's multi-slice test series.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

import jipkit as jip
from jipkit.config import SiteConfig
from jipkit.data import load
from jipkit.data.headers import read_header
from jipkit.data.synth import SeriesInfo, write_series

SMALL = (16, 40, 48)


@pytest.fixture
def site(tmp_site: SiteConfig) -> jip.Site:
    return jip.connect(tmp_site)


def load_written(site: jip.Site, info: SeriesInfo, **kw: Any) -> Any:
    site.index_paths([os.path.commonpath(info.paths)], progress=False)
    return site.load_series(info.series_uid, **kw)


def sitk_read(paths: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    folder = os.path.commonpath(paths)
    if all(Path(p).parent == Path(folder) for p in paths):
        uids = reader.GetGDCMSeriesIDs(folder)
        assert len(uids) == 1
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder, uids[0]))
    else:  # nested folders: let GDCM sort the given files by position
        reader.SetFileNames(list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, "", False, True)))
    return reader.Execute()


def assert_matches_sitk(vol: jip.Volume, img: sitk.Image) -> None:
    ref = sitk.GetArrayFromImage(img)  # (z, y, x), as ours
    np.testing.assert_array_equal(vol.array.astype(np.float64), ref.astype(np.float64))
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.spacing[::-1], img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.array(img.GetDirection()).reshape(3, 3), atol=1e-6)


@pytest.mark.parametrize(
    "geometry",
    [
        {},
        {"feet_first": True},
        {"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)},  # sagittal
        {"orientation": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), "feet_first": True},  # coronal
        {"orientation": (0.866025, 0.5, 0.0, -0.5, 0.866025, 0.0)},  # rotated in plane
    ],
    ids=["axial", "feet-first", "sagittal", "coronal-ff", "oblique"],
)
def test_geometry_matches_truth_and_simpleitk(
    site: jip.Site, tmp_path: Path, geometry: dict[str, Any]
) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, spacing=(2.0, 0.7, 0.9), **geometry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a regular series loads without warnings
        vol = load_written(site, info)
    assert vol.sop_instance_uids == info.sop_uids
    np.testing.assert_array_equal(vol.array, info.expected)
    assert vol.array.dtype == np.int16  # CT, slope 1: Hounsfield units in int16
    np.testing.assert_allclose(vol.affine, info.affine, atol=1e-4)
    np.testing.assert_allclose(vol.positions, info.positions, atol=1e-4)
    np.testing.assert_allclose(vol.spacing, info.spacing, atol=1e-6)
    assert_matches_sitk(vol, sitk_read(info.paths))
    # every slice position is where the affine says it is
    np.testing.assert_allclose(
        vol.index_to_lps([[k, 0, 0] for k in range(vol.shape[0])]), info.positions, atol=1e-4
    )


def test_order_ignores_file_names_and_instance_numbers(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, feet_first=True, shuffle=True)
    by_name = sorted(info.paths, key=lambda p: p.name)
    assert [info.paths.index(p) for p in by_name] != list(range(len(info.paths)))
    assert info.instance_numbers != sorted(info.instance_numbers)
    vol = load_written(site, info)
    np.testing.assert_array_equal(vol.array, info.expected)


def test_gantry_tilt_is_reported_and_affine_sheared(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, tilt_deg=15.0)
    with pytest.warns(jip.GeometryWarning, match=r"Gantry tilt of 15\.0"):
        vol = load_written(site, info)
    np.testing.assert_allclose(vol.affine, info.affine, atol=1e-4)
    np.testing.assert_allclose(
        vol.index_to_lps([[k, 0, 0] for k in range(vol.shape[0])]), info.positions, atol=1e-4
    )
    np.testing.assert_array_equal(vol.array, info.expected)


def test_missing_slices_are_reported(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, missing=[5, 6])
    with pytest.warns(jip.GeometryWarning, match="About 2 slice"):
        vol = load_written(site, info)
    assert vol.shape[0] == SMALL[0] - 2
    np.testing.assert_allclose(vol.positions, info.positions, atol=1e-4)
    assert any("missing" in n for n in vol.notes)


def test_uneven_spacing_is_reported(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL)
    for k, p in enumerate(info.paths[8:], start=8):  # push the upper slices 0.3 mm further
        ds = pydicom.dcmread(p)
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.3 * (k - 7)]
        ds.save_as(p)
    with pytest.warns(jip.GeometryWarning, match="Uneven slice spacing"):
        load_written(site, info)


def test_per_slice_rescale_gives_float32(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, per_slice_rescale=True)
    vol = load_written(site, info)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, info.expected, rtol=1e-5, atol=1e-3)


def test_several_echoes_refused_then_split(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, modality="MR", echoes=2)
    site.index_paths([tmp_path / "s"], progress=False)
    with pytest.raises(jip.AmbiguousSeriesError, match="EchoNumbers") as err:
        site.load_series(info.series_uid)
    assert err.value.attribute == "EchoNumbers"
    vols = site.load_series(info.series_uid, split_by="EchoNumbers")
    assert isinstance(vols, dict) and sorted(vols) == [1, 2]
    assert info.expected_by_echo is not None
    for echo, expected in info.expected_by_echo.items():
        np.testing.assert_array_equal(vols[echo].array, expected)


def test_mixed_sizes_refused(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL)
    other = write_series(tmp_path / "o", shape=(2, 20, 20), seed=5, study_uid=info.study_uid)
    for p in other.paths:  # move two images of another size into the first series
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = info.series_uid
        ds.save_as(tmp_path / "s" / p.name)
    site.index_paths([tmp_path / "s"], progress=False)
    with pytest.raises(jip.MixedSeriesError, match="Rows"):
        site.load_series(info.series_uid)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_multiframe_enhanced(site: jip.Site, tmp_path: Path, modality: str) -> None:
    info = write_series(tmp_path / "s", shape=SMALL, multiframe=True, modality=modality, feet_first=True)
    vol = load_written(site, info)
    np.testing.assert_array_equal(vol.array, info.expected)
    np.testing.assert_allclose(vol.affine, info.affine, atol=1e-4)


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda t: t.name
)
def test_transfer_syntaxes_decode(site: jip.Site, tmp_path: Path, ts: str) -> None:
    info = write_series(tmp_path / "s", shape=(6, 32, 32), transfer_syntax=ts)
    vol = load_written(site, info)
    np.testing.assert_array_equal(vol.array, info.expected)


def test_pydicom_multislice_series_match_simpleitk(site: jip.Site) -> None:
    """pydicom's own 16x16 CT series (dicomdirtests/98892001/CT5N), against SimpleITK."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"  # type: ignore[arg-type]
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(paths) == 5
    site.index_paths(paths, progress=False)
    uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    vol = site.load_series(uid)
    assert vol.shape == (5, 16, 16)
    assert_matches_sitk(vol, sitk_read(paths))


def test_series_without_pixels(site: jip.Site, tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    for kw in ("Rows", "Columns"):
        delattr(ds, kw)
    ds.save_as(tmp_path / "sr.dcm")
    site.index_paths([tmp_path], progress=False)
    with pytest.raises(jip.NoPixelDataError, match="holds no images"):
        site.load_series(ds.SeriesInstanceUID)


def test_unknown_series(site: jip.Site) -> None:
    with pytest.raises(jip.NotFoundError, match="jip index"):
        site.load_series("1.2.3.4")


def test_duplicates_load_once_and_say_so(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=SMALL)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "dup.dcm").write_bytes(info.paths[3].read_bytes())
    site.index_paths([tmp_path / "s", tmp_path / "copy"], progress=False)
    with pytest.warns(jip.GeometryWarning, match="more than one file"):
        vol = site.load_series(info.series_uid)
    np.testing.assert_array_equal(vol.array, info.expected)
    assert str(info.paths[3]) in vol.locations or str(tmp_path / "copy" / "dup.dcm") in vol.locations


def test_fast_path_is_byte_identical_to_pydicom_on_its_test_files() -> None:
    """Every pydicom test file the fast path accepts reads the same bytes as pydicom."""
    accepted = 0
    for path in get_testdata_files():
        if not os.path.isfile(path):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rec = read_header(path)
            except Exception:
                continue
            rows = [{**rec, "SOPInstanceUID": rec["SOPInstanceUID"]}]
            try:
                groups, _ = load.plan(rows, "x")
            except jip.JipError:
                continue
            frame = groups[None][0]
            if not load._fast_ok(frame):
                continue
            dtype = load._stored_dtype(rec)
            assert dtype is not None
            out = np.empty((int(rec["Rows"]), int(rec["Columns"])), dtype=dtype)
            assert load._read_fast(frame, out), path
            ref = pydicom.dcmread(path).pixel_array
            assert out.dtype == ref.dtype, path
            np.testing.assert_array_equal(out, ref, err_msg=path)
            accepted += 1
    assert accepted >= 20


def test_changed_file_falls_back_to_pydicom(site: jip.Site, tmp_path: Path) -> None:
    info = write_series(tmp_path / "s", shape=(4, 16, 16))
    site.index_paths([tmp_path / "s"], progress=False)
    ds = pydicom.dcmread(info.paths[0])
    ds.PatientComments = "x" * 101  # shifts the pixel data offset
    ds.save_as(info.paths[0])
    vol = site.load_series(info.series_uid)  # not re-indexed: the fast path must notice
    np.testing.assert_array_equal(vol.array, info.expected)


def test_to_torch_and_lazy(site: jip.Site, tmp_path: Path) -> None:
    import torch

    info = write_series(tmp_path / "s", shape=SMALL)
    vol = load_written(site, info)
    t = vol.to_torch(dtype=torch.float32)
    assert tuple(t.shape) == vol.shape and t.dtype == torch.float32
    lazy = site.lazy_series(info.series_uid)
    assert lazy.shape == vol.shape and lazy.dtype == vol.dtype
    np.testing.assert_array_equal(lazy[3:5].compute(), info.expected[3:5])
    got = list(site.iter_series([info.series_uid], progress=False))
    assert got[0][0] == info.series_uid


def test_torch_dataset_over_a_cohort(site: jip.Site, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from jipkit.data.torch import SeriesDataset

    infos = [write_series(tmp_path / f"s{i}", shape=(4, 16, 16), seed=i) for i in range(3)]
    site.index_paths([tmp_path], progress=False)
    cohort = site.find_series(Modality="CT")
    ds = SeriesDataset(site, cohort)
    assert len(ds) == 3
    by_uid = {i.series_uid: i for i in infos}
    for item in DataLoader(ds, batch_size=1):
        uid = item["SeriesInstanceUID"][0]
        np.testing.assert_array_equal(item["image"][0, 0].numpy(), by_uid[uid].expected)
        np.testing.assert_allclose(item["affine"][0].numpy(), by_uid[uid].affine, atol=1e-4)
