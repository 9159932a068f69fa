"""Tests of jipkit.data.synth: what it writes is what it says it wrote.

Every check reads the files back with pydicom (and SimpleITK where it applies),
independently of the writer's own bookkeeping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from jipkit.data.synth import (
    CT_LABELS,
    MR_LABELS,
    SeriesInfo,
    generate_archive,
    phantom_ct,
    phantom_ct_labels,
    phantom_mr,
    phantom_mr_labels,
    write_series,
)

SMALL = (12, 24, 20)  # z, y, x: not square, so rows and columns cannot be swapped unnoticed


def _normal(ds: Dataset) -> npt.NDArray[np.float64]:
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def _read_sorted(paths: list[Path]) -> list[Dataset]:
    """Read files and sort them along the slice normal, as a correct loader does."""
    files = [pydicom.dcmread(p) for p in paths]
    return sorted(files, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), _normal(ds))))


def _values(ds: Dataset) -> npt.NDArray[np.float64]:
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    return ds.pixel_array.astype(np.float64) * slope + intercept


def _volume(files: list[Dataset]) -> npt.NDArray[np.float64]:
    return np.stack([_values(ds) for ds in files])


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("feet_first", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_files_sorted_by_position_give_expected(tmp_path: Path, feet_first: bool, shuffle: bool) -> None:
    info = write_series(tmp_path, shape=SMALL, feet_first=feet_first, shuffle=shuffle)
    assert sorted(_all_files(tmp_path)) == sorted(info.paths)
    files = _read_sorted(info.paths)
    assert np.array_equal(_volume(files), info.expected)
    assert info.expected.shape == SMALL
    got = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in files])
    assert np.array_equal(got, info.positions)
    assert [str(ds.SOPInstanceUID) for ds in files] == info.sop_uids
    # the affine maps voxel (i, j, k) to the position of slice k's first voxel
    for k, pos in enumerate(info.positions):
        assert np.allclose(info.affine @ [0, 0, k, 1], [*pos, 1], atol=1e-5)
    assert np.allclose(info.positions[0], [-8.0, -9.6, -15.0])  # centred: x = -20 * 0.8 / 2
    ds = files[0]
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
    assert float(ds.SliceThickness) == 2.5
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.PatientPosition == ("FFS" if feet_first else "HFS")


def test_default_geometry_is_centred(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=(4, 8, 8))
    assert info.spacing == (2.5, 0.8, 0.8)
    # (n * spacing) / 2 back from the centre, along x, y and z
    assert np.allclose(info.positions[0], [-3.2, -3.2, -5.0])
    assert np.allclose(np.diff(info.positions, axis=0), [[0, 0, 2.5]] * 3)


def test_left_of_patient_is_larger_x(tmp_path: Path) -> None:
    """The left lung lies at larger column index, which maps to larger LPS x."""
    labels = phantom_ct_labels(SMALL, (2.5, 0.8, 0.8), seed=0)
    left = np.argwhere(labels == CT_LABELS["lung_left"])[:, 2].mean()
    right = np.argwhere(labels == CT_LABELS["lung_right"])[:, 2].mean()
    assert left > right
    spine_rows = np.argwhere(labels == CT_LABELS["bone"])[:, 1].mean()
    assert spine_rows > SMALL[1] / 2  # posterior: larger y
    info = write_series(tmp_path, shape=SMALL)
    x_left = (info.affine @ [left, 0, 0, 1])[0]
    x_right = (info.affine @ [right, 0, 0, 1])[0]
    assert x_left > x_right


@pytest.mark.parametrize("feet_first", [False, True])
@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)],  # axial; sagittal
    ids=["axial", "sagittal"],
)
def test_simpleitk_reads_same_voxels_and_geometry(
    tmp_path: Path, feet_first: bool, orientation: tuple[float, ...]
) -> None:
    sitk = pytest.importorskip("SimpleITK")
    info = write_series(tmp_path, shape=SMALL, feet_first=feet_first, orientation=orientation)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(tmp_path), recursive=True)
    assert len(names) == SMALL[0]
    reader.SetFileNames(names)
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image), info.expected)
    assert np.allclose(image.GetOrigin(), info.positions[0], atol=1e-4)
    assert np.allclose(image.GetSpacing(), info.spacing[::-1], atol=1e-4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction, info.affine[:3, :3] / np.array(info.spacing[::-1]), atol=1e-6)


def test_feet_first_shuffled_instance_numbers_disagree_with_position(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, feet_first=True, shuffle=True)
    files = _read_sorted(info.paths)  # position order, ascending z
    numbers = [int(ds.InstanceNumber) for ds in files]
    assert numbers == info.instance_numbers
    assert numbers != sorted(numbers)
    assert numbers[-1] == 1  # number 1 is the highest slice
    # file names carry no order either, and no patient information
    by_name = [pydicom.dcmread(p).InstanceNumber for p in sorted(info.paths)]
    assert by_name != sorted(by_name) and by_name != sorted(by_name, reverse=True)
    name = str(files[0].PatientName)
    assert all(name not in str(p) and files[0].PatientID not in str(p) for p in info.paths)


def test_head_first_unshuffled_names_follow_instance_number(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, shuffle=False)
    assert [p.name for p in info.paths] == [f"IM{k:05d}.dcm" for k in range(1, SMALL[0] + 1)]
    assert info.instance_numbers == list(range(1, SMALL[0] + 1))


@pytest.mark.parametrize("tilt", [-20.0, 12.5])
def test_gantry_tilt_shears_positions(tmp_path: Path, tilt: float) -> None:
    info = write_series(tmp_path, shape=SMALL, tilt_deg=tilt, spacing=(3.0, 0.7, 0.7))
    files = _read_sorted(info.paths)
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in files])
    drift = 3.0 * math.tan(math.radians(tilt))
    assert np.allclose(np.diff(pos, axis=0), [[0.0, drift, 3.0]] * (SMALL[0] - 1), atol=2e-6)
    assert np.allclose(info.affine[:3, 2], [0.0, drift, 3.0])
    assert all(float(ds.GantryDetectorTilt) == tilt for ds in files)
    assert all([float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0] for ds in files)
    assert np.array_equal(_volume(files), info.expected)


def test_missing_slices_are_not_written(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, missing=[3, 7, 7])
    assert len(_all_files(tmp_path)) == SMALL[0] - 2
    assert info.expected.shape == (SMALL[0] - 2, *SMALL[1:])
    steps = np.diff(info.positions[:, 2])
    assert sorted(steps.round(6).tolist()) == [2.5] * (SMALL[0] - 5) + [5.0, 5.0]
    files = _read_sorted(info.paths)
    assert np.array_equal(_volume(files), info.expected)
    # the kept slices are the full phantom's slices
    full, _ = phantom_ct(SMALL, (2.5, 0.8, 0.8), seed=0)
    assert np.array_equal(info.expected, np.delete(full, [3, 7], axis=0))


def test_per_slice_rescale_needs_floats(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, per_slice_rescale=True)
    assert info.expected.dtype == np.float32
    files = _read_sorted(info.paths)
    slopes = {float(ds.RescaleSlope) for ds in files}
    assert len(slopes) > 1 and any(not s.is_integer() for s in slopes)
    assert np.array_equal(_volume(files), info.expected)
    assert np.array_equal(info.rescale[:, 0], [float(ds.RescaleSlope) for ds in files])
    # the stored values are the quantised phantom: within half a slope of it
    full, _ = phantom_ct(SMALL, (2.5, 0.8, 0.8), seed=0)
    assert np.all(np.abs(info.expected - full) <= 1.0)


def test_echoes_share_positions_and_differ_by_echo_number(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, modality="MR", echoes=3)
    assert info.expected_by_echo is not None
    assert len(info.paths) == 3 * SMALL[0]
    files = [pydicom.dcmread(p) for p in info.paths]
    for e in (1, 2, 3):
        echo = [ds for ds in files if int(ds.EchoNumbers) == e]
        assert len(echo) == SMALL[0]
        assert len({float(ds.EchoTime) for ds in echo}) == 1
        vol = _volume(sorted(echo, key=lambda ds: float(ds.ImagePositionPatient[2])))
        assert np.array_equal(vol, info.expected_by_echo[e])
    assert np.array_equal(info.expected, info.expected_by_echo[1])
    # later echoes decay
    assert info.expected_by_echo[3].sum() < info.expected_by_echo[1].sum()
    # sop_uids are echo-major
    assert [int(ds.EchoNumbers) for ds in files[:: SMALL[0]]] == [1, 2, 3]
    assert "RescaleSlope" not in files[0]  # MR: no rescale written by default
    assert files[0].PixelRepresentation == 0


def _frame_position(ds: Dataset, f: int) -> list[float]:
    item = ds.PerFrameFunctionalGroupsSequence[f].PlanePositionSequence[0]
    return [float(v) for v in item.ImagePositionPatient]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_multiframe_is_readable_and_frames_match(tmp_path: Path, modality: str) -> None:
    echoes = 2 if modality == "MR" else 1
    info = write_series(
        tmp_path, shape=SMALL, modality=modality, multiframe=True, echoes=echoes, feet_first=True
    )
    assert len(info.paths) == 1 and info.frame_map is not None
    ds = pydicom.dcmread(info.paths[0])
    enhanced = {"CT": pydicom.uid.EnhancedCTImageStorage, "MR": pydicom.uid.EnhancedMRImageStorage}
    assert ds.SOPClassUID == enhanced[modality]
    assert ds.pixel_array.shape == (SMALL[0] * echoes, *SMALL[1:])
    assert int(ds.NumberOfFrames) == SMALL[0] * echoes
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.8, 0.8]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert iop == list(info.orientation)
    pvt = shared.PixelValueTransformationSequence[0]
    slope, intercept = float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
    ks = info.frame_map[:, 1]
    assert sorted(ks.tolist()) != ks.tolist()  # frames are shuffled
    by_echo = info.expected_by_echo or {1: info.expected}
    for f, (echo, k) in enumerate(info.frame_map.tolist()):
        assert np.array_equal(_frame_position(ds, f), info.positions[k])
        assert np.array_equal(ds.pixel_array[f] * slope + intercept, by_echo[echo][k])
        if echoes > 1:
            te = ds.PerFrameFunctionalGroupsSequence[f].MREchoSequence[0].EffectiveEchoTime
            assert te == {1: 2.5, 2: 7.5}[echo]


def test_multiframe_per_frame_rescale(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, multiframe=True, per_slice_rescale=True)
    assert info.frame_map is not None
    ds = pydicom.dcmread(info.paths[0])
    assert "PixelValueTransformationSequence" not in ds.SharedFunctionalGroupsSequence[0]
    for f, (_, k) in enumerate(info.frame_map.tolist()):
        pvt = ds.PerFrameFunctionalGroupsSequence[f].PixelValueTransformationSequence[0]
        values = ds.pixel_array[f] * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
        assert np.array_equal(values, info.expected[k])


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
    ids=lambda u: u.name,
)
@pytest.mark.parametrize("multiframe", [False, True], ids=["single", "multi"])
def test_transfer_syntaxes_decode_to_the_same_values(tmp_path: Path, syntax: str, multiframe: bool) -> None:
    shape = (3, 40, 32)  # JPEG 2000 (openjpeg) needs at least 32 x 32
    info = write_series(tmp_path, shape=shape, transfer_syntax=syntax, multiframe=multiframe)
    files = [pydicom.dcmread(p) for p in info.paths]
    assert all(ds.file_meta.TransferSyntaxUID == syntax for ds in files)
    assert [str(ds.SOPInstanceUID) for ds in files] == info.sop_uids  # compress() kept them
    if multiframe:
        assert info.frame_map is not None
        arr = files[0].pixel_array.astype(float) - 1024.0
        assert np.array_equal(arr, info.expected[info.frame_map[:, 1]])
    else:
        assert np.array_equal(_volume(_read_sorted(info.paths)), info.expected)


def test_signed_volume_unsigned_storage(tmp_path: Path) -> None:
    vol = np.arange(2 * 4 * 6, dtype=np.int16).reshape(2, 4, 6) - 1000
    info = write_series(tmp_path, volume=vol, signed=False, rescale=(1.0, -1024.0))
    ds = pydicom.dcmread(info.paths[0])
    assert ds.PixelRepresentation == 0 and ds.pixel_array.dtype == np.uint16
    assert np.array_equal(_volume(_read_sorted(info.paths)), vol)
    with pytest.raises(ValueError, match="do not fit"):
        write_series(tmp_path / "bad", volume=vol - 100, signed=False)


def test_float_volume_with_fractional_rescale(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = rng.uniform(-50, 50, size=(3, 5, 7))
    info = write_series(tmp_path, volume=vol, rescale=(0.5, -20.0), bits_allocated=16)
    assert info.expected.dtype == np.float32
    assert np.all(np.abs(info.expected - vol) <= 0.25)
    assert np.array_equal(_volume(_read_sorted(info.paths)), info.expected)


def test_eight_bit_storage(tmp_path: Path) -> None:
    vol = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    info = write_series(tmp_path, volume=vol, modality="MR", bits_allocated=8)
    ds = pydicom.dcmread(info.paths[0])
    assert ds.BitsAllocated == 8 and ds.pixel_array.dtype == np.uint8
    assert np.array_equal(_volume(_read_sorted(info.paths)), vol)


# --------------------------------------------------------------------------- headers


def test_headers_are_complete(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=(2, 8, 8))
    ds = pydicom.dcmread(info.paths[0])
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "BodyPartExamined",
        "FrameOfReferenceUID",
        "KVP",
        "SliceThickness",
        "PixelSpacing",
    ):
        assert kw in ds, kw
    assert ds.StudyInstanceUID == info.study_uid and ds.SeriesInstanceUID == info.series_uid
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "2018" <= ds.StudyDate[:4] <= "2024"
    assert len(ds.PatientID) == 8 and ds.PatientID.isdigit()


@pytest.mark.parametrize(
    ("name", "charset"),
    [
        ("Müller^Jürgen", None),
        ("山田^太郎", None),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
        ("Διονυσιος", "ISO_IR 126"),
        ("שרון^דבורה", "ISO_IR 138"),
        ("Núñez^José", "ISO_IR 100"),
    ],
)
def test_names_round_trip_with_their_character_set(
    tmp_path: Path, name: str, charset: str | list[str] | None
) -> None:
    patient: dict[str, object] = {"PatientName": name, "PatientID": "00012345"}
    if charset is not None:
        patient["SpecificCharacterSet"] = charset
    info = write_series(tmp_path, shape=(1, 4, 4), patient=patient)
    ds = pydicom.dcmread(info.paths[0])
    assert str(ds.PatientName) == name
    assert ds.PatientID == "00012345"
    if charset is None:
        assert ds.SpecificCharacterSet == "ISO_IR 192"
    raw = pydicom.dcmread(info.paths[0], specific_tags=["PatientName"])
    encoded = raw.get_item("PatientName").value
    if charset == ["", "ISO 2022 IR 87"]:
        assert b"\x1b$B" in encoded  # the escape sequence into JIS X 0208
    assert name.encode("utf-8") != encoded or charset is None


def test_overrides_by_keyword(tmp_path: Path) -> None:
    info = write_series(
        tmp_path,
        shape=(2, 4, 4),
        study={"StudyDescription": "Thorax low dose", "AccessionNumber": "ACC0001"},
        series={"SeriesNumber": 7, "ConvolutionKernel": "Br59", "WindowCenter": None},
    )
    ds = pydicom.dcmread(info.paths[0])
    assert ds.StudyDescription == "Thorax low dose" and ds.AccessionNumber == "ACC0001"
    assert ds.SeriesNumber == 7 and ds.ConvolutionKernel == "Br59"
    assert "WindowCenter" not in ds


def test_bad_arguments_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_series(tmp_path, shape=(1, 4, 4), patient={"PatientsName": "x"})
    with pytest.raises(ValueError, match="set per image"):
        write_series(tmp_path, shape=(1, 4, 4), series={"ImagePositionPatient": [0, 0, 0]})
    with pytest.raises(ValueError, match="unit vector"):
        write_series(tmp_path, shape=(1, 4, 4), orientation=(2, 0, 0, 0, 1, 0))
    with pytest.raises(ValueError, match="cannot write"):
        write_series(tmp_path, shape=(1, 4, 4), transfer_syntax=pydicom.uid.JPEGBaseline8Bit)
    with pytest.raises(ValueError, match="32 x 32"):
        write_series(tmp_path, shape=(1, 16, 40), transfer_syntax=JPEG2000Lossless)
    with pytest.raises(ValueError, match="missing"):
        write_series(tmp_path, shape=(2, 4, 4), missing=[2])
    with pytest.raises(ValueError, match="echoes"):
        write_series(tmp_path, shape=(2, 4, 4), multiframe=True, echoes=2)
    assert _all_files(tmp_path) == []
    write_series(tmp_path, shape=(1, 4, 4))
    with pytest.raises(FileExistsError):
        write_series(tmp_path, shape=(1, 4, 4))


# --------------------------------------------------------------------------- determinism


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in _all_files(folder)}


@pytest.mark.parametrize("multiframe", [False, True])
def test_equal_seeds_write_identical_files(tmp_path: Path, multiframe: bool) -> None:
    a = write_series(tmp_path / "a", shape=(3, 8, 8), seed=5, multiframe=multiframe)
    b = write_series(tmp_path / "b", shape=(3, 8, 8), seed=5, multiframe=multiframe)
    c = write_series(tmp_path / "c", shape=(3, 8, 8), seed=6, multiframe=multiframe)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert a.sop_uids == b.sop_uids and not set(a.sop_uids) & set(c.sop_uids)
    assert a.study_uid != c.study_uid


def test_series_of_one_seed_share_a_study_but_not_uids(tmp_path: Path) -> None:
    ct = write_series(tmp_path / "ct", shape=(3, 8, 8), seed=2)
    mr = write_series(tmp_path / "mr", shape=(3, 8, 8), seed=2, modality="MR")
    thin = write_series(tmp_path / "thin", shape=(6, 8, 8), spacing=(1.25, 0.8, 0.8), seed=2)
    assert ct.study_uid == mr.study_uid == thin.study_uid
    assert len({ct.series_uid, mr.series_uid, thin.series_uid}) == 3
    assert not set(ct.sop_uids) & set(thin.sop_uids)
    given = np.zeros((3, 8, 8), np.int16)
    other = write_series(tmp_path / "v1", volume=given, seed=2)
    other2 = write_series(tmp_path / "v2", volume=given + 1, seed=2)
    assert other.series_uid != other2.series_uid


# --------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("seed", [0, 1])
def test_ct_ground_truth_counts_labels(seed: int) -> None:
    shape, spacing = (20, 40, 48), (2.0, 1.5, 1.25)
    hu, truth = phantom_ct(shape, spacing, seed)
    labels = phantom_ct_labels(shape, spacing, seed)
    ml = 2.0 * 1.5 * 1.25 / 1000
    left = np.count_nonzero(labels == CT_LABELS["lung_left"])
    right = np.count_nonzero(labels == CT_LABELS["lung_right"])
    assert truth["lung_left_ml"] == pytest.approx(left * ml)
    assert truth["lung_right_ml"] == pytest.approx(right * ml)
    assert truth["lung_total_ml"] == pytest.approx((left + right) * ml)
    assert truth["body_ml"] == pytest.approx(np.count_nonzero(labels) * ml)
    assert hu.dtype == np.int16 and hu.shape == shape
    # the values say which tissue is where; a threshold finds the lungs exactly
    lungs = (hu < -500) & (labels != CT_LABELS["air"])
    assert np.array_equal(lungs, np.isin(labels, [CT_LABELS["lung_left"], CT_LABELS["lung_right"]]))
    assert np.all(hu[labels == CT_LABELS["air"]] <= -990)
    assert np.all(hu[labels == CT_LABELS["bone"]] >= 680)
    assert left > 0 and right > 0


def test_lung_sizes_vary_with_seed() -> None:
    sizes = {round(phantom_ct((12, 32, 32), (5.0, 2.0, 2.0), s)[1]["lung_total_ml"], 3) for s in range(5)}
    assert len(sizes) == 5


def test_mr_ground_truth_counts_labels() -> None:
    shape, spacing = (16, 32, 28), (4.0, 2.0, 2.0)
    mr, truth = phantom_mr(shape, spacing, seed=3)
    labels = phantom_mr_labels(shape, spacing, seed=3)
    ml = 4.0 * 2.0 * 2.0 / 1000
    gm = np.count_nonzero(labels == MR_LABELS["gray_matter"])
    wm = np.count_nonzero(labels == MR_LABELS["white_matter"])
    assert truth["brain_ml"] == pytest.approx((gm + wm) * ml)
    assert truth["white_matter_ml"] == pytest.approx(wm * ml)
    assert truth["csf_ml"] == pytest.approx(np.count_nonzero(labels == MR_LABELS["csf"]) * ml)
    assert truth["head_ml"] == pytest.approx(np.count_nonzero(labels) * ml)
    assert mr.dtype == np.uint16 and wm > 0 and gm > 0
    assert mr[labels == MR_LABELS["white_matter"]].min() > mr[labels == MR_LABELS["gray_matter"]].max()


def test_series_ground_truth_covers_written_slices(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=SMALL, missing=[0, 5])
    labels = np.delete(phantom_ct_labels(SMALL, (2.5, 0.8, 0.8), seed=0), [0, 5], axis=0)
    ml = 2.5 * 0.8 * 0.8 / 1000
    assert info.ground_truth is not None
    left = np.count_nonzero(labels == CT_LABELS["lung_left"])
    assert info.ground_truth["lung_left_ml"] == pytest.approx(left * ml)
    given = write_series(tmp_path / "given", volume=np.zeros((2, 4, 4), np.int16))
    assert given.ground_truth is None


def test_series_info_is_frozen(tmp_path: Path) -> None:
    info = write_series(tmp_path, shape=(1, 4, 4))
    assert isinstance(info, SeriesInfo)
    with pytest.raises(AttributeError):
        info.series_uid = "1.2"  # type: ignore[misc]
    assert info.transfer_syntax == ExplicitVRLittleEndian


# --------------------------------------------------------------------------- archive

ARCHIVE_CT, ARCHIVE_MR = (8, 40, 36), (6, 24, 20)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Fourteen patients: every name in the generator's list once."""
    root = tmp_path_factory.mktemp("archive")
    manifest = generate_archive(root, n_patients=14, seed=0, ct_shape=ARCHIVE_CT, mr_shape=ARCHIVE_MR)
    return root, manifest


def _headers(root: Path) -> list[tuple[Path, Dataset]]:
    return [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted(root.rglob("*.dcm"))]


def test_archive_manifest_matches_the_files(archive: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = archive
    headers = _headers(root)
    assert len(headers) == manifest["n_instances"].sum()
    by_series: dict[str, list[Dataset]] = {}
    for _, ds in headers:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    assert set(by_series) == set(manifest["SeriesInstanceUID"])
    for row in manifest.itertuples():
        files = by_series[str(row.SeriesInstanceUID)]
        assert len(files) == row.n_instances
        ds = files[0]
        assert str(ds.PatientName) == row.PatientName
        assert ds.PatientID == row.PatientID
        assert ds.StudyInstanceUID == row.StudyInstanceUID
        assert ds.Modality == row.Modality and ds.StudyDate == row.StudyDate
        assert ds.BodyPartExamined == row.BodyPartExamined
        assert ds.Manufacturer == row.Manufacturer
        assert len({str(f.StudyInstanceUID) for f in files}) == 1
    # a patient is one ID with one name; 1-3 studies each, dated 2018-2024
    assert manifest.groupby("PatientID")["PatientName"].nunique().eq(1).all()
    studies = manifest.groupby("PatientID")["StudyInstanceUID"].nunique()
    assert studies.between(1, 3).all() and len(studies) == 14
    assert manifest["StudyDate"].between("20180101", "20241231").all()
    assert manifest["PatientID"].str.fullmatch(r"\d{8}").all()
    accessions = manifest.groupby("StudyInstanceUID")["AccessionNumber"].unique()
    assert accessions.map(len).eq(1).all() and manifest["AccessionNumber"].nunique() == len(accessions)
    assert {"CT", "MR"} == set(manifest["Modality"])
    assert manifest["feet_first"].any() and not manifest["feet_first"].all()
    assert manifest["Manufacturer"].nunique() >= 2


def test_archive_paths_say_nothing_about_patients(archive: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = archive
    paths = [p.relative_to(root) for p in root.rglob("*.dcm")]
    assert all(len(p.parts) == 3 for p in paths)  # ab/cd/<hash>.dcm
    text = "\n".join(map(str, paths))
    for name, pid in zip(manifest["PatientName"], manifest["PatientID"], strict=True):
        assert pid not in text
        assert all(part not in text for part in name.replace("=", "^").split("^") if part)


def test_archive_names_and_character_sets(archive: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = archive
    names = set(manifest["PatientName"])
    for expected in ("Müller^Jürgen", "Ng^A", "Li^Yu", "山田^太郎", "Διονυσιος", "Núñez^José"):
        assert expected in names
    charsets = {}
    for p, ds in _headers(root):
        value = ds.get("SpecificCharacterSet", "")
        charsets[str(ds.PatientName)] = (p, value if isinstance(value, str) else tuple(value))
    path, charset = charsets["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert charset == ("", "ISO 2022 IR 87")
    raw = pydicom.dcmread(path, specific_tags=["PatientName"]).get_item("PatientName").value
    assert b"\x1b$B" in raw  # the ideographic group is escaped into JIS X 0208
    assert charsets["Διονυσιος"][1] == "ISO_IR 126"
    assert charsets["Li^Yu"][1] == ""


def test_archive_ground_truth_csv(archive: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = archive
    truth = pd.read_csv(root / "ground_truth.csv", dtype={"PatientID": str})
    ct = manifest[manifest["Modality"] == "CT"].reset_index(drop=True)
    assert len(truth) == len(ct)
    assert truth["PatientID"].tolist() == ct["PatientID"].tolist()
    assert truth["SeriesInstanceUID"].tolist() == ct["SeriesInstanceUID"].tolist()
    for col in ("lung_left_ml", "lung_right_ml", "lung_total_ml", "body_ml"):
        assert np.allclose(truth[col], ct[col])
    assert "PatientName" not in truth
    assert (truth["lung_left_ml"] + truth["lung_right_ml"]).round(6).equals(truth["lung_total_ml"].round(6))
    # lung volumes differ between patients
    assert truth.groupby("PatientID")["lung_total_ml"].first().nunique() > 5
    # some studies hold a second, thicker reconstruction in the same frame of reference
    per_study = ct.groupby("StudyInstanceUID").size()
    assert per_study.max() == 2 and per_study.min() == 1
    mr = manifest[manifest["Modality"] == "MR"]
    assert mr["brain_ml"].gt(0).all() and mr["lung_total_ml"].isna().all()


def test_archive_ground_truth_matches_the_pixels(archive: tuple[Path, pd.DataFrame]) -> None:
    """Count lung voxels in the DICOM pixels, split into left and right by LPS x."""
    root, manifest = archive
    uid = manifest.loc[manifest["Modality"] == "CT", "SeriesInstanceUID"].iloc[0]
    row = manifest.set_index("SeriesInstanceUID").loc[uid]
    paths = [p for p, ds in _headers(root) if ds.SeriesInstanceUID == uid]
    files = _read_sorted(paths)
    hu = _volume(files)
    ds = files[0]
    ml = float(ds.SliceThickness) * float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1]) / 1000
    x0, dx = float(ds.ImagePositionPatient[0]), float(ds.PixelSpacing[1])
    x = x0 + dx * np.arange(hu.shape[2])
    inside = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):  # lungs: dark voxels enclosed by the body in their row
        body = hu[k] > -500
        first = np.where(body.any(axis=1), body.argmax(axis=1), hu.shape[2])
        last = np.where(body.any(axis=1), hu.shape[2] - 1 - body[:, ::-1].argmax(axis=1), -1)
        cols = np.arange(hu.shape[2])
        inside[k] = (cols >= first[:, None]) & (cols <= last[:, None])
    lungs = inside & (hu < -500)
    assert lungs[:, :, x > 0].sum() * ml == pytest.approx(row["lung_left_ml"])
    assert lungs[:, :, x < 0].sum() * ml == pytest.approx(row["lung_right_ml"])
    assert (hu > -500).sum() * ml + lungs.sum() * ml == pytest.approx(row["body_ml"])


def test_archive_is_deterministic_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = generate_archive(tmp_path / "a", n_patients=3, seed=7)  # default shapes
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"3 patients took {elapsed:.1f} s"
    b = generate_archive(tmp_path / "b", n_patients=3, seed=7, ct_shape=ARCHIVE_CT, mr_shape=ARCHIVE_MR)
    c = generate_archive(
        tmp_path / "c",
        n_patients=3,
        seed=7,
        ct_shape=ARCHIVE_CT,
        mr_shape=ARCHIVE_MR,
        workers=2,
        progress=True,
    )
    assert _tree(tmp_path / "b") == _tree(tmp_path / "c")
    pd.testing.assert_frame_equal(b, c)
    assert a["SeriesInstanceUID"].tolist() != b["SeriesInstanceUID"].tolist()  # other shapes
    assert a["PatientID"].tolist() == b["PatientID"].tolist()  # same patients and studies
    d = generate_archive(tmp_path / "d", n_patients=3, seed=8, ct_shape=ARCHIVE_CT, mr_shape=ARCHIVE_MR)
    assert not set(d["SeriesInstanceUID"]) & set(b["SeriesInstanceUID"])
