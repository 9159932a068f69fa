"""Synthetic DICOM data with known ground truth: phantoms, series and whole archives.

No real patient data is ever needed to test JIP.  This module writes DICOM files
whose geometry, pixel values and headers are chosen by the caller, and returns
what a correct reader must find in them:

- :func:`phantom_ct` and :func:`phantom_mr` draw a chest CT (body, fat, two
  lungs, spine) and a head MR (scalp, skull, CSF, grey and white matter) with
  exact label volumes;
- :func:`write_series` writes one series (single-frame images or one enhanced
  multi-frame instance) with control over every trap a loader meets: feet-first
  order, shuffled file names, gantry tilt, missing slices, per-slice rescale,
  several echoes, compressed transfer syntaxes and character sets;
- :func:`generate_archive` writes a small hospital archive of several patients,
  studies and series, with a manifest and a ``ground_truth.csv``.

Everything is deterministic: the same arguments and ``seed`` give byte-identical
files, wherever they are written.

Coordinates follow DICOM: patient LPS (x to the patient's left, y to the
posterior, z to the head), in mm.  Volumes are indexed ``(z, y, x)``: slice,
row, column.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydicom import dcmwrite
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import PersonName, format_number_as_ds

__all__ = [
    "CT_LABELS",
    "MR_LABELS",
    "SeriesInfo",
    "generate_archive",
    "phantom_ct",
    "phantom_ct_labels",
    "phantom_mr",
    "phantom_mr_labels",
    "write_series",
]

#: Label values of :func:`phantom_ct_labels`.
CT_LABELS: Final[Mapping[str, int]] = {
    "air": 0,
    "soft_tissue": 1,
    "fat": 2,
    "lung_right": 3,
    "lung_left": 4,
    "bone": 5,
}

#: Label values of :func:`phantom_mr_labels`.
MR_LABELS: Final[Mapping[str, int]] = {
    "background": 0,
    "scalp": 1,
    "skull": 2,
    "csf": 3,
    "gray_matter": 4,
    "white_matter": 5,
}

_CT_HU: Final = np.array([-1000, 40, -100, -850, -850, 700], dtype=np.int16)
_MR_T1: Final = np.array([0, 900, 60, 180, 520, 760], dtype=np.int16)

#: Transfer syntaxes :func:`write_series` can write, all lossless.
_NATIVE_SYNTAXES: Final = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
_ENCODED_SYNTAXES: Final = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})

#: Attributes that write_series sets per image; they cannot be overridden.
_PER_IMAGE_KEYWORDS: Final = frozenset(
    {
        "SOPInstanceUID",
        "InstanceNumber",
        "ImagePositionPatient",
        "SliceLocation",
        "RescaleSlope",
        "RescaleIntercept",
        "EchoNumbers",
        "EchoTime",
        "PixelData",
        "NumberOfFrames",
        "PerFrameFunctionalGroupsSequence",
        "SharedFunctionalGroupsSequence",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
    }
)

_UID_ROOT: Final = "jipkit.synth.v1"
_T2_MS: Final = 60.0  # decay between echoes, exp(-dTE / T2)


# --------------------------------------------------------------------------- phantoms


def _centred_mm(n: int, step: float) -> npt.NDArray[np.float64]:
    """Voxel-centre coordinates (mm) of ``n`` samples, centred on 0."""
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * step


def _check_grid(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {tuple(shape)}")
    if len(spacing) != 3 or any(not float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive mm (z, y, x), got {tuple(spacing)}")
    nz, ny, nx = (int(n) for n in shape)
    return nz, ny, nx


def _ct_labels(
    shape: Sequence[int], spacing: Sequence[float], seed: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Label volume of the chest phantom and its voxel counts per slice and label."""
    nz, ny, nx = _check_grid(shape, spacing)
    dz, dy, dx = (float(s) for s in spacing)
    ez, ey, ex = nz * dz, ny * dy, nx * dx
    z = _centred_mm(nz, dz)
    y = _centred_mm(ny, dy)[:, None]
    x = _centred_mm(nx, dx)[None, :]
    rng = np.random.default_rng([seed, 1])
    # Body: an elliptic cylinder, sized per patient, with a ring of subcutaneous
    # fat and a spine behind the mediastinum.
    bx, by = rng.uniform(0.88, 1.0, size=2)
    ax, ay = 0.44 * ex * bx, 0.32 * ey * by
    fat = 0.04 * min(ex, ey)
    body = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
    inner = (x / (ax - fat)) ** 2 + (y / (ay - fat)) ** 2 <= 1.0
    spine_r = 0.06 * min(ex, ey) * by
    spine = x**2 + (y - 0.22 * ey * by) ** 2 <= spine_r**2
    plane = np.zeros((ny, nx), dtype=np.uint8)
    plane[body] = CT_LABELS["fat"]
    plane[inner] = CT_LABELS["soft_tissue"]
    plane[spine] = CT_LABELS["bone"]
    # Lungs: ellipsoids either side of the mediastinum, sized per patient.
    # Patient left is +x, so the left lung lies at larger x (larger column index).
    lungs = []
    for label, side in ((CT_LABELS["lung_right"], -1.0), (CT_LABELS["lung_left"], 1.0)):
        sx, sy, sz = rng.uniform(0.8, 1.1, size=3)
        if side > 0:  # the heart takes room from the left lung
            sx *= 0.9
        cx, cy = side * 0.21 * ex * bx, -0.02 * ey * by
        cz = rng.uniform(-0.05, 0.1) * ez
        q = ((x - cx) / (0.13 * ex * bx * sx)) ** 2 + ((y - cy) / (0.20 * ey * by * sy)) ** 2
        lungs.append((label, q, (z - cz) / (0.40 * ez * sz)))
    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    counts = np.zeros((nz, len(CT_LABELS)), dtype=np.int64)
    for k in range(nz):
        sl = labels[k]
        sl[...] = plane
        for label, q, zn in lungs:
            sl[q <= 1.0 - zn[k] ** 2] = label
        counts[k] = np.bincount(sl.ravel(), minlength=len(CT_LABELS))
    return labels, counts


def _mr_labels(
    shape: Sequence[int], spacing: Sequence[float], seed: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Label volume of the head phantom and its voxel counts per slice and label."""
    nz, ny, nx = _check_grid(shape, spacing)
    dz, dy, dx = (float(s) for s in spacing)
    ez, ey, ex = nz * dz, ny * dy, nx * dx
    rng = np.random.default_rng([seed, 2])
    z = _centred_mm(nz, dz) / (0.45 * ez)
    y = _centred_mm(ny, dy)[:, None] / (0.45 * ey)
    x = _centred_mm(nx, dx)[None, :] / (0.40 * ex)
    r2 = x**2 + y**2  # nested ellipsoids share one normalised radius
    brain = rng.uniform(0.95, 1.05)
    wm = rng.uniform(0.58, 0.66)
    shells = (  # (label, scale of the outer surface), painted outside in
        (MR_LABELS["scalp"], 1.0),
        (MR_LABELS["skull"], 0.94),
        (MR_LABELS["csf"], 0.88 * brain),
        (MR_LABELS["gray_matter"], 0.85 * brain),
        (MR_LABELS["white_matter"], wm * brain),
    )
    vent_a = rng.uniform(0.06, 0.1)
    vq = [((x - side * 0.12) / vent_a) ** 2 + (y / (2.5 * vent_a)) ** 2 for side in (-1, 1)]
    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    counts = np.zeros((nz, len(MR_LABELS)), dtype=np.int64)
    for k in range(nz):
        sl = labels[k]
        sl[...] = MR_LABELS["background"]
        zk2 = float(z[k]) ** 2
        for label, s in shells:
            sl[r2 <= s * s - zk2] = label
        zv = (float(z[k]) - 0.05) / (1.5 * vent_a)
        for q in vq:
            sl[q <= 1.0 - zv * zv] = MR_LABELS["csf"]
        counts[k] = np.bincount(sl.ravel(), minlength=len(MR_LABELS))
    return labels, counts


def _ct_truth(counts: npt.NDArray[np.int64], spacing: Sequence[float]) -> dict[str, float]:
    ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    c = counts.sum(axis=0)
    left, right = int(c[CT_LABELS["lung_left"]]), int(c[CT_LABELS["lung_right"]])
    return {
        "lung_left_ml": left * ml,
        "lung_right_ml": right * ml,
        "lung_total_ml": (left + right) * ml,
        "body_ml": int(c.sum() - c[CT_LABELS["air"]]) * ml,
    }


def _mr_truth(counts: npt.NDArray[np.int64], spacing: Sequence[float]) -> dict[str, float]:
    ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    c = counts.sum(axis=0)
    gm, wm = int(c[MR_LABELS["gray_matter"]]), int(c[MR_LABELS["white_matter"]])
    return {
        "gray_matter_ml": gm * ml,
        "white_matter_ml": wm * ml,
        "brain_ml": (gm + wm) * ml,
        "csf_ml": int(c[MR_LABELS["csf"]]) * ml,
        "head_ml": int(c.sum() - c[MR_LABELS["background"]]) * ml,
    }


def _paint(
    labels: npt.NDArray[np.uint8],
    table: npt.NDArray[np.int16],
    rng: np.random.Generator,
    noise: int,
    dtype: type[np.signedinteger[Any]] | type[np.unsignedinteger[Any]],
) -> npt.NDArray[Any]:
    """Look labels up in ``table`` and add uniform noise inside the object."""
    out = np.empty(labels.shape, dtype=dtype)
    for k in range(labels.shape[0]):
        sl = table[labels[k]]
        jitter = rng.integers(-noise, noise + 1, size=sl.shape, dtype=np.int16)
        jitter[labels[k] == 0] //= 4  # quieter background
        out[k] = np.clip(sl + jitter, np.iinfo(dtype).min, np.iinfo(dtype).max)
    return out


def phantom_ct_labels(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    seed: int = 0,
) -> npt.NDArray[np.uint8]:
    """Label volume of the chest phantom of :func:`phantom_ct`.

    Parameters
    ----------
    shape : tuple of int
        Volume size ``(z, y, x)``.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.  The anatomy scales with the field of
        view, so two grids over the same extent show the same anatomy.
    seed : int
        Chooses the patient: lung sizes and positions vary with it.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``shape`` holding the values of :data:`CT_LABELS`.
    """
    return _ct_labels(shape, spacing, seed)[0]


def phantom_ct(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    seed: int = 0,
) -> tuple[npt.NDArray[np.int16], dict[str, float]]:
    """A chest CT phantom in Hounsfield units, with exact organ volumes.

    Air (-1000 HU) surrounds an elliptic body cylinder of soft tissue (40 HU)
    inside a ring of fat (-100 HU); two ellipsoidal lungs (-850 HU) lie either
    side of the mediastinum and a spine (700 HU) behind it.  Tissues get mild
    uniform noise (±12 HU).  With the identity orientation the patient's left
    lung lies at larger column indices (LPS: +x is the patient's left) and the
    spine at larger row indices (posterior).

    Parameters
    ----------
    shape : tuple of int
        Volume size ``(z, y, x)``.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.
    seed : int
        Chooses the patient (lung sizes) and the noise.

    Returns
    -------
    volume : numpy.ndarray
        ``int16`` HU values, shape ``shape``, indexed ``(z, y, x)``.
    truth : dict of str to float
        ``lung_left_ml``, ``lung_right_ml``, ``lung_total_ml`` and ``body_ml``
        (everything that is not air): label voxel counts times the voxel volume,
        exact for the returned volume.  The labels themselves come from
        :func:`phantom_ct_labels`.

    Examples
    --------
    >>> hu, truth = phantom_ct((16, 32, 32), (5.0, 2.0, 2.0), seed=3)
    >>> hu.dtype, round(truth["lung_total_ml"] - truth["lung_left_ml"], 3) > 0
    (dtype('int16'), True)
    """
    labels, counts = _ct_labels(shape, spacing, seed)
    hu = _paint(labels, _CT_HU, np.random.default_rng([seed, 3]), 12, np.int16)
    return hu, _ct_truth(counts, spacing)


def phantom_mr_labels(
    shape: tuple[int, int, int] = (32, 64, 64),
    spacing: tuple[float, float, float] = (4.0, 3.0, 3.0),
    seed: int = 0,
) -> npt.NDArray[np.uint8]:
    """Label volume of the head phantom of :func:`phantom_mr`.

    Parameters
    ----------
    shape : tuple of int
        Volume size ``(z, y, x)``.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.
    seed : int
        Chooses the patient: brain, white matter and ventricle sizes vary with it.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``shape`` holding the values of :data:`MR_LABELS`.
    """
    return _mr_labels(shape, spacing, seed)[0]


def phantom_mr(
    shape: tuple[int, int, int] = (32, 64, 64),
    spacing: tuple[float, float, float] = (4.0, 3.0, 3.0),
    seed: int = 0,
) -> tuple[npt.NDArray[np.uint16], dict[str, float]]:
    """A T1-weighted head MR phantom, with exact tissue volumes.

    Nested ellipsoids: scalp (900), skull (60), CSF (180), grey matter (520)
    and white matter (760), with two ventricles (CSF), on a dark background;
    mild uniform noise (±15).  The values are stored as they are (no rescale).

    Parameters
    ----------
    shape : tuple of int
        Volume size ``(z, y, x)``.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in mm.
    seed : int
        Chooses the patient (tissue sizes) and the noise.

    Returns
    -------
    volume : numpy.ndarray
        ``uint16`` signal values, shape ``shape``, indexed ``(z, y, x)``.
    truth : dict of str to float
        ``gray_matter_ml``, ``white_matter_ml``, ``brain_ml`` (grey + white),
        ``csf_ml`` and ``head_ml`` (everything but background): exact label
        voxel counts times the voxel volume.
    """
    labels, counts = _mr_labels(shape, spacing, seed)
    mr = _paint(labels, _MR_T1, np.random.default_rng([seed, 4]), 15, np.uint16)
    return mr, _mr_truth(counts, spacing)


# --------------------------------------------------------------------------- series


@dataclass(frozen=True, eq=False)
class SeriesInfo:
    """What :func:`write_series` wrote, and what a correct reader must find.

    Attributes
    ----------
    study_uid, series_uid : str
        StudyInstanceUID and SeriesInstanceUID.
    sop_uids : list of str
        SOPInstanceUIDs in volume order (index ``k`` of :attr:`expected`),
        echo-major when there are several echoes (all of echo 1, then echo 2).
        One UID for a multi-frame series.
    paths : list of pathlib.Path
        The files, parallel to :attr:`sop_uids`.
    instance_numbers : list of int
        InstanceNumber of each file, parallel to :attr:`sop_uids`.  Follows the
        acquisition order, not the volume order: loaders must not sort by it.
    positions : numpy.ndarray
        ``(n_slices, 3)`` ImagePositionPatient (LPS, mm) of each written slice in
        volume order, exactly as written (missing slices left out).
    orientation : tuple of float
        ImageOrientationPatient: the row direction, then the column direction.
    spacing : tuple of float
        ``(z, y, x)`` in mm: slice step along the normal, row spacing, column
        spacing (PixelSpacing is ``[y, x]``).
    affine : numpy.ndarray
        4x4 matrix mapping ``(column i, row j, slice k, 1)`` to LPS mm.  Its
        columns are row direction x column spacing, column direction x row
        spacing, the slice step vector (sheared by a gantry tilt) and the
        position of slice ``k = 0`` (before any slice is removed as missing).
    expected : numpy.ndarray
        ``(z, y, x)`` values after rescale, in volume order (ascending along the
        slice normal), missing slices left out; the first echo when there are
        several.  ``float32`` when the rescale varies per slice or is not
        integral, otherwise an integer type that holds the values.
    rescale : numpy.ndarray
        ``(n_slices, 2)`` RescaleSlope and RescaleIntercept of each written slice.
    modality : str
        ``"CT"`` or ``"MR"``.
    transfer_syntax : str
        Transfer Syntax UID of the files.
    expected_by_echo : dict of int to numpy.ndarray, optional
        With several echoes: EchoNumbers (1, 2, ...) to that echo's volume.
    frame_map : numpy.ndarray, optional
        For a multi-frame series: ``(n_frames, 2)``; row ``f`` gives the echo
        number and the slice index ``k`` in :attr:`expected` of frame ``f``
        (0-based, in file order).
    ground_truth : dict of str to float, optional
        When the built-in phantom was written: its tissue volumes over the
        written slices (see :func:`phantom_ct`, :func:`phantom_mr`).
    """

    study_uid: str
    series_uid: str
    sop_uids: list[str]
    paths: list[Path]
    instance_numbers: list[int]
    positions: npt.NDArray[np.float64]
    orientation: tuple[float, ...]
    spacing: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    expected: npt.NDArray[Any]
    rescale: npt.NDArray[np.float64]
    modality: str
    transfer_syntax: str
    expected_by_echo: dict[int, npt.NDArray[Any]] | None = None
    frame_map: npt.NDArray[np.int64] | None = None
    ground_truth: dict[str, float] | None = None


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[_UID_ROOT, *(str(p) for p in parts)])


def _ds(value: float) -> str:
    """``value`` as a DS string, rounded to 1e-6 mm so that it reads back exactly."""
    text = format_number_as_ds(round(float(value), 6) + 0.0)
    return str(text)


def _is_ascii(value: object) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, list | tuple):
        return all(_is_ascii(v) for v in value)
    if isinstance(value, PersonName):
        return str(value).isascii()
    return True


def _stored_dtype(bits: int, signed: bool) -> np.dtype[Any]:
    if bits not in (8, 16, 32):
        raise ValueError(f"bits_allocated must be 8, 16 or 32, got {bits}")
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def _quantize(
    values: npt.NDArray[Any], slope: float, intercept: float, dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """Stored values for ``values`` after rescale; raises when they do not fit."""
    if values.dtype.kind in "iub" and slope == 1.0 and float(intercept).is_integer():
        stored = values.astype(np.int64) - int(intercept)
    else:
        stored = np.rint((values.astype(np.float64) - intercept) / slope)
        if not np.isfinite(stored).all():
            raise ValueError("volume holds NaN or infinite values, which DICOM cannot store")
    info = np.iinfo(dtype)
    lo, hi = stored.min(), stored.max()
    if lo < info.min or hi > info.max:
        raise ValueError(
            f"stored values {lo}..{hi} (volume - {intercept}) / {slope} do not fit "
            f"{dtype.name}; change rescale, bits_allocated or signed"
        )
    return stored.astype(dtype)


def _unit(v: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
    n = float(np.linalg.norm(v))
    if not math.isclose(n, 1.0, abs_tol=1e-4):
        raise ValueError(f"{name} of orientation must be a unit vector, got {v.tolist()}")
    return v / n


def _check_overrides(*maps: Mapping[str, object] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for m in maps:
        for kw, value in (m or {}).items():
            if tag_for_keyword(kw) is None:
                raise ValueError(f"{kw!r} is not a DICOM keyword (check its spelling)")
            if kw in _PER_IMAGE_KEYWORDS:
                raise ValueError(f"{kw} is set per image by write_series and cannot be overridden")
            out[kw] = value
    return out


def _parse_date(value: object) -> _dt.date | None:
    try:
        return _dt.datetime.strptime(str(value), "%Y%m%d").date()
    except ValueError:
        return None


def _study_datetime(overrides: Mapping[str, object]) -> _dt.datetime | None:
    """StudyDate and StudyTime from the overrides, when they are valid DICOM DA and TM."""
    date = _parse_date(overrides.get("StudyDate"))
    if date is None:
        return None
    time = str(overrides.get("StudyTime") or "000000")
    try:
        t = _dt.datetime.strptime(time.split(".")[0].ljust(6, "0"), "%H%M%S").time()
    except ValueError:
        t = _dt.time()
    return _dt.datetime.combine(date, t)


def _set_age(ds: Dataset, when: _dt.datetime) -> None:
    """PatientAge from PatientBirthDate at the study date (removed when unknown)."""
    birth = _parse_date(ds.get("PatientBirthDate", ""))
    if birth is None or birth > when.date():
        if "PatientAge" in ds:
            del ds.PatientAge
        return
    years = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    ds.PatientAge = f"{years:03d}Y"


def _datetime(seed: int) -> _dt.datetime:
    rng = np.random.default_rng([seed, 5])
    start = _dt.datetime(2018, 1, 1, 7, 0)
    days = int(rng.integers(0, (_dt.date(2024, 12, 31) - _dt.date(2018, 1, 1)).days + 1))
    minutes = int(rng.integers(0, 11 * 60))
    return start + _dt.timedelta(days=days, minutes=minutes)


_DEFAULT_NAMES: Final = (
    "Doe^Jane",
    "Roe^Richard",
    "Smith^Alex",
    "Jansen^Pieter",
    "Rossi^Maria",
    "Novak^Petra",
    "Kowalski^Jan",
    "Brown^Sam",
)


def _base_dataset(
    *,
    modality: str,
    seed: int,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    when: _dt.datetime,
    feet_first: bool,
    spacing: tuple[float, float, float],
    orientation: tuple[float, ...],
    rows: int,
    cols: int,
    dtype: np.dtype[Any],
    rescale: tuple[float, float] | None,
    tilt_deg: float,
    echo_time: float,
) -> Dataset:
    """The header every image of a single-frame series shares."""
    rng = np.random.default_rng([seed, 6])
    ds = Dataset()
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    birth = _dt.date(when.year - int(rng.integers(25, 90)), int(rng.integers(1, 13)), 15)
    # Patient
    ds.PatientName = _DEFAULT_NAMES[seed % len(_DEFAULT_NAMES)]
    ds.PatientID = f"{int(rng.integers(1, 10**8)):08d}"
    ds.IssuerOfPatientID = "JIP-SYNTH"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if rng.random() < 0.5 else "M"
    ds.PatientAge = f"{when.year - birth.year:03d}Y"
    ds.PatientWeight = _ds(float(rng.integers(50, 110)))
    # Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StudyID = str(int(rng.integers(1, 10**5)))
    ds.AccessionNumber = f"A{int(rng.integers(0, 10**9)):09d}"
    # Series and equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.PatientPosition = "FFS" if feet_first else "HFS"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.InstitutionName = "JIP Synthetic Hospital"
    ds.StationName = "SYNTH01"
    ds.DeviceSerialNumber = str(10000 + seed % 90000)
    ds.SoftwareVersions = "synth-1"
    # Image
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
    ds.SliceThickness = _ds(spacing[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    bits = dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if dtype.kind == "i" else 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale[0]), _ds(rescale[1])
    if modality == "CT":
        ds.SOPClassUID = CTImageStorage
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "SOMATOM Force"
        ds.StudyDescription = "CT Thorax"
        ds.SeriesDescription = f"Thorax {spacing[0]:g} Br40"
        ds.ProtocolName = "Thorax Routine"
        ds.BodyPartExamined = "CHEST"
        ds.KVP = "120"
        ds.XRayTubeCurrent = 200
        ds.ExposureTime = 500
        ds.ConvolutionKernel = "Br40"
        ds.GantryDetectorTilt = _ds(tilt_deg)
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.SOPClassUID = MRImageStorage
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "MAGNETOM Skyra"
        ds.StudyDescription = "MR Head"
        ds.SeriesDescription = "t1_mprage_tra"
        ds.ProtocolName = "t1_mprage_tra"
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = ["SP", "MP"]
        ds.ScanOptions = "IR"
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "2300"
        ds.EchoTime = _ds(echo_time)
        ds.InversionTime = "900"
        ds.FlipAngle = "9"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "3"
        ds.ImagingFrequency = "123.2"
        ds.ImagedNucleus = "1H"
        ds.SpacingBetweenSlices = _ds(spacing[0])
        ds.WindowCenter, ds.WindowWidth = "500", "1000"
    return ds


def _apply_overrides(ds: Dataset, overrides: Mapping[str, object]) -> None:
    for kw, value in overrides.items():
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    if "SpecificCharacterSet" not in overrides and not all(_is_ascii(v) for v in overrides.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"


def _file_name(dest: Path, sop_uid: str, shuffle: bool, instance_number: int) -> Path:
    """Where one instance goes: hashed nested names when shuffled, IM00001.dcm otherwise."""
    if not shuffle:
        return dest / f"IM{instance_number:05d}.dcm"
    h = hashlib.blake2b(sop_uid.encode(), digest_size=16).hexdigest()
    return dest / h[:2] / h[2:4] / f"{h}.dcm"


def _save(ds: Dataset, path: Path, transfer_syntax: str, pixels: npt.NDArray[Any]) -> None:
    """Write ``ds`` with ``pixels`` (stored values) in ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax in _ENCODED_SYNTAXES:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.compress(transfer_syntax, arr=pixels, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(transfer_syntax)
        ds.file_meta = meta
        ds.add_new(0x7FE00010, "OB" if pixels.dtype.itemsize == 1 else "OW", pixels.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True, overwrite=False)


def _check_transfer_syntax(transfer_syntax: str, rows: int, cols: int) -> UID:
    ts = UID(transfer_syntax)
    if ts in _NATIVE_SYNTAXES:
        return ts
    if ts not in _ENCODED_SYNTAXES:
        known = ", ".join(sorted(u.name for u in _NATIVE_SYNTAXES | _ENCODED_SYNTAXES))
        raise ValueError(f"cannot write {ts.name or ts}: use one of the lossless {known}")
    encoder = get_encoder(ts)
    if not encoder.is_available:
        raise ValueError(f"no encoder for {ts.name} is installed: {encoder.missing_dependencies}")
    if ts == JPEG2000Lossless and min(rows, cols) < 32:  # openjpeg's 6 DWT resolutions
        raise ValueError(f"JPEG 2000 needs images of at least 32 x 32 pixels, got {rows} x {cols}")
    return ts


def write_series(
    dest: Path | str,
    *,
    volume: npt.NDArray[Any] | None = None,
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    origin: Sequence[float] | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    modality: str = "CT",
    feet_first: bool = False,
    tilt_deg: float = 0.0,
    missing: Sequence[int] = (),
    shuffle: bool = True,
    rescale: tuple[float, float] | None = None,
    per_slice_rescale: bool = False,
    echoes: int = 1,
    multiframe: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient: Mapping[str, object] | None = None,
    study: Mapping[str, object] | None = None,
    series: Mapping[str, object] | None = None,
    study_uid: str | None = None,
    seed: int = 0,
    bits_allocated: int = 16,
    signed: bool | None = None,
) -> SeriesInfo:
    """Write one synthetic CT or MR series whose geometry and values are known.

    Parameters
    ----------
    dest : path-like
        Folder to write into (created if needed).  Existing files are never
        overwritten: writing the same series twice raises ``FileExistsError``.
    volume : numpy.ndarray, optional
        ``(z, y, x)`` values after rescale (HU for CT), in volume order.  Stored
        values are ``round((volume - intercept) / slope)``.  Default: the
        :func:`phantom_ct` or :func:`phantom_mr` phantom of ``shape``.
    shape : tuple of int
        Size ``(z, y, x)`` of the phantom; ignored when ``volume`` is given.
    spacing : tuple of float
        ``(z, y, x)`` in mm: slice step along the normal, row and column spacing.
    origin : sequence of float, optional
        ImagePositionPatient of slice ``k = 0``.  Default: the volume is centred
        on the origin of the patient coordinate system, which for the default
        shape is ``(-38.4, -38.4, -60.0)``.
    orientation : sequence of float
        ImageOrientationPatient; the slice normal is row x column, and slice
        ``k`` lies at ``origin + k * step`` along it.
    modality : {"CT", "MR"}
        CT Image Storage or MR Image Storage (Enhanced ones when ``multiframe``).
    feet_first : bool
        InstanceNumber 1 (and the first file written) is the slice at the
        highest position along the normal instead of the lowest;
        PatientPosition is ``FFS``.  Positions stay geometrically correct.
    tilt_deg : float
        Gantry tilt: slice ``k`` is shifted by ``k * spacing[0] * tan(tilt)``
        along the column direction.  Slices stay parallel and
        ImageOrientationPatient is unchanged; GantryDetectorTilt is set.
    missing : sequence of int
        Slice indices (volume order) not written, to test gap detection; they
        are left out of ``expected``, ``positions`` and ``sop_uids``.
    shuffle : bool
        File names are a hash of the SOPInstanceUID in nested folders
        (``dest/ab/cd/abcd....dcm``), so their order says nothing; multi-frame
        frames are stored in a random order.  When False, files are named
        ``IM00001.dcm`` after their InstanceNumber (one series per folder) and
        frames follow the acquisition order.
    rescale : tuple of float, optional
        ``(slope, intercept)``.  Default ``(1, -1024)`` for CT; for MR
        ``(1, 0)`` and no rescale attributes at all, as most MR scanners write.
    per_slice_rescale : bool
        Each slice gets its own RescaleSlope (a multiple of 0.25 in 0.5..2) and
        RescaleIntercept (``intercept`` plus up to ±50), so a loader must return
        floats; ``expected`` is ``float32`` (exact: the products are
        representable).
    echoes : int
        Images per position, told apart by EchoNumbers and EchoTime; echo ``e``
        holds the stored values of echo 1 times ``exp(-(TE_e - TE_1) / 60 ms)``.
        ``expected`` is echo 1; ``expected_by_echo`` holds them all.
    multiframe : bool
        Write one Enhanced CT or Enhanced MR Image instance: shared Pixel
        Measures, Plane Orientation and Pixel Value Transformation (per frame
        with ``per_slice_rescale``), per-frame Plane Position and Frame Content
        (and MR Echo with several echoes; enhanced CT does not allow echoes).
        ``frame_map`` maps frames to slices.
    transfer_syntax : str
        Explicit or Implicit VR Little Endian, Deflated Explicit VR Little
        Endian, or (through :meth:`pydicom.dataset.Dataset.compress`) RLE
        Lossless, JPEG-LS Lossless or JPEG 2000 Lossless.  Only lossless
        syntaxes, so that ``expected`` stays exact.
    patient, study, series : mapping of str to object, optional
        Header values by DICOM keyword, applied over the defaults; ``None``
        removes an attribute.  Non-ASCII text sets SpecificCharacterSet to
        ``ISO_IR 192`` unless the mappings set it, e.g.
        ``patient={"PatientName": "Müller^Jürgen", "PatientID": "00012345"}``.
    study_uid : str, optional
        StudyInstanceUID.  Default: derived from ``seed``, ``patient`` and
        ``study`` only, so series written with equal values share a study.
    seed : int
        Everything random (phantom, UIDs, default patient, dates, file names)
        derives from it and the other arguments: equal calls write identical
        files.
    bits_allocated : {8, 16, 32}
        BitsAllocated; BitsStored equals it.
    signed : bool, optional
        PixelRepresentation 1.  Default: True for CT, False for MR.

    Returns
    -------
    SeriesInfo
        UIDs, paths, geometry and the voxel values a correct loader returns.

    Raises
    ------
    ValueError
        For inconsistent arguments: a bad shape, orientation or keyword, values
        that do not fit the stored type, an unsupported transfer syntax.
    FileExistsError
        When a file of the series already exists in ``dest``.

    Examples
    --------
    >>> info = write_series(tmp_path / "ct", feet_first=True, tilt_deg=15)  # doctest: +SKIP
    >>> info.expected.shape, info.positions[1] - info.positions[0]  # doctest: +SKIP
    ((48, 96, 96), array([0.     , 0.66987, 2.5    ]))
    """
    dest = Path(dest)
    seed, tilt_deg = int(seed), float(tilt_deg)  # plain types, so that UIDs do not vary
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if echoes < 1:
        raise ValueError(f"echoes must be at least 1, got {echoes}")
    if multiframe and echoes > 1 and modality == "CT":
        raise ValueError("enhanced CT has no echoes: use modality='MR' or multiframe=False")
    if signed is None:
        signed = modality == "CT"
    dtype = _stored_dtype(bits_allocated, signed)
    overrides = _check_overrides(patient, study, series)
    spacing_t = (float(spacing[0]), float(spacing[1]), float(spacing[2]))

    # Volume, and the phantom's truth when we draw it ourselves.
    counts: npt.NDArray[np.int64] | None = None
    if volume is None:
        nz, ny, nx = _check_grid(shape, spacing_t)
        if modality == "CT":
            labels, counts = _ct_labels((nz, ny, nx), spacing_t, seed)
            volume = _paint(labels, _CT_HU, np.random.default_rng([seed, 3]), 12, np.int16)
        else:
            labels, counts = _mr_labels((nz, ny, nx), spacing_t, seed)
            volume = _paint(labels, _MR_T1, np.random.default_rng([seed, 4]), 15, np.uint16)
        del labels
        fingerprint = f"phantom{(nz, ny, nx)}"
    else:
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
        nz, ny, nx = _check_grid(volume.shape, spacing_t)
        data = np.ascontiguousarray(volume)
        digest = hashlib.blake2b(data.data, digest_size=16).hexdigest()
        fingerprint = f"{volume.dtype.str}{volume.shape}{digest}"

    ts = _check_transfer_syntax(transfer_syntax, ny, nx)

    # Geometry.
    if len(orientation) != 6:
        raise ValueError(f"orientation must have 6 values, got {len(orientation)}")
    row = _unit(np.asarray(orientation[:3], dtype=np.float64), "row direction")
    col = _unit(np.asarray(orientation[3:], dtype=np.float64), "column direction")
    if abs(float(row @ col)) > 1e-4:
        raise ValueError(f"orientation rows and columns are not orthogonal: {list(orientation)}")
    normal = np.cross(row, col)
    dz, dy, dx = spacing_t
    if not -60.0 < tilt_deg < 60.0:
        raise ValueError(f"tilt_deg must lie within ±60 degrees, got {tilt_deg}")
    step = normal * dz + col * dz * math.tan(math.radians(tilt_deg))
    if origin is None:
        origin_v = -(row * nx * dx + col * ny * dy + normal * nz * dz) / 2.0
    else:
        origin_v = np.asarray(origin, dtype=np.float64).reshape(3)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * dx, col * dy, step, origin_v

    gone = sorted({int(k) for k in missing})
    if any(not 0 <= k < nz for k in gone):
        raise ValueError(f"missing slice indices must lie in 0..{nz - 1}, got {list(missing)}")
    kept = [k for k in range(nz) if k not in set(gone)]
    if not kept:
        raise ValueError("every slice is missing: nothing to write")
    n = len(kept)
    pos_text = [[_ds(v) for v in origin_v + k * step] for k in kept]
    positions = np.array([[float(v) for v in p] for p in pos_text], dtype=np.float64)
    slice_loc = [_ds(float(p @ normal)) for p in positions]

    # Rescale, per slice (in kept order).
    base = rescale if rescale is not None else ((1.0, -1024.0) if modality == "CT" else (1.0, 0.0))
    slope0, icpt0 = float(base[0]), float(base[1])
    if slope0 == 0.0:
        raise ValueError("rescale slope must not be 0")
    rng = np.random.default_rng([seed, 7])
    slopes: npt.NDArray[np.float64] = np.full(n, slope0)
    icpts: npt.NDArray[np.float64] = np.full(n, icpt0)
    if per_slice_rescale:
        slopes = rng.integers(2, 9, size=n).astype(np.float64) * 0.25
        icpts = icpt0 + rng.integers(-50, 51, size=n).astype(np.float64)
    write_rescale = modality == "CT" or per_slice_rescale or (slope0, icpt0) != (1.0, 0.0)
    integral = not per_slice_rescale and slope0.is_integer() and icpt0.is_integer()
    identity = (slope0, icpt0) == (1.0, 0.0) and not per_slice_rescale

    # UIDs: the study from the patient and study only; the rest from everything.
    key = repr(
        (
            seed,
            modality,
            fingerprint,
            spacing_t,
            origin_v.round(6).tolist(),
            [round(float(v), 6) for v in orientation],
            feet_first,
            tilt_deg,
            gone,
            (slope0, icpt0),
            per_slice_rescale,
            echoes,
            multiframe,
            str(ts),
            sorted((k, repr(v)) for k, v in overrides.items()),
            study_uid,
            bits_allocated,
            signed,
        )
    )
    pkey = repr(sorted((k, repr(v)) for k, v in {**(patient or {}), **(study or {})}.items()))
    study_uid = study_uid or str(_uid("study", seed, pkey))
    when = _study_datetime(overrides) or _datetime(seed)
    te = [2.5 + 5.0 * e for e in range(echoes)]
    template = _base_dataset(
        modality=modality,
        seed=seed,
        study_uid=study_uid,
        series_uid=str(_uid("series", key)),
        for_uid=str(_uid("frame-of-reference", key)),
        when=when,
        feet_first=feet_first,
        spacing=spacing_t,
        orientation=tuple(float(v) for v in orientation),
        rows=ny,
        cols=nx,
        dtype=dtype,
        rescale=(slope0, icpt0) if write_rescale else None,
        tilt_deg=tilt_deg,
        echo_time=te[0],
    )
    _apply_overrides(template, overrides)
    if "PatientAge" not in overrides:
        _set_age(template, when)

    # Stored values and expected volumes, echo by echo.
    exp_dtype: np.dtype[Any]
    if not integral:
        exp_dtype = np.dtype(np.float32)
    elif identity:
        exp_dtype = dtype
    else:
        exp_dtype = np.dtype(np.int16)
    stored = np.empty((echoes, n, ny, nx), dtype=dtype)
    expected = np.empty((echoes, n, ny, nx), dtype=exp_dtype)
    for i, k in enumerate(kept):
        s1 = _quantize(volume[k], float(slopes[i]), float(icpts[i]), dtype)
        for e in range(echoes):
            if e == 0:
                s = s1
            else:
                decay = math.exp(-(te[e] - te[0]) / _T2_MS)
                s = np.rint(s1.astype(np.float64) * decay).astype(dtype)
            stored[e, i] = s
            if integral:
                val = s.astype(np.int64) * int(slopes[i]) + int(icpts[i])
                info = np.iinfo(expected.dtype)
                if val.min() < info.min or val.max() > info.max:
                    expected = expected.astype(np.int64)
                expected[e, i] = val
            else:
                expected[e, i] = (s.astype(np.float64) * slopes[i] + icpts[i]).astype(np.float32)
    i32 = np.iinfo(np.int32)
    if expected.dtype == np.int64 and i32.min <= expected.min() and expected.max() <= i32.max:
        expected = expected.astype(np.int32)
    del volume

    # Acquisition order: ascending along the normal, or descending when feet first.
    acq = list(range(n))[::-1] if feet_first else list(range(n))
    rank = {i: r for r, i in enumerate(acq)}
    order_rng = np.random.default_rng([seed, 8])
    dest.mkdir(parents=True, exist_ok=True)
    ts_uid = str(ts)

    sop_uids: list[str] = []
    paths: list[Path] = []
    numbers: list[int] = []
    frame_map: npt.NDArray[np.int64] | None = None
    if multiframe:
        frames = [(e, i) for e in range(echoes) for i in acq]
        if shuffle:
            frames = [frames[p] for p in order_rng.permutation(len(frames))]
        frame_map = np.array([(e + 1, i) for e, i in frames], dtype=np.int64)
        ds = _enhanced(
            template,
            modality=modality,
            frames=frames,
            pos_text=pos_text,
            slopes=slopes,
            icpts=icpts,
            per_frame_rescale=per_slice_rescale,
            echo_times=te,
            spacing=spacing_t,
            when=when,
            acq_rank=rank,
        )
        ds.SOPInstanceUID = _uid("instance", key, "multiframe")
        ds.InstanceNumber = 1
        path = _file_name(dest, str(ds.SOPInstanceUID), shuffle, 1)
        pixels = np.stack([stored[e, i] for e, i in frames])
        _save(ds, path, ts_uid, pixels)
        sop_uids, paths, numbers = [str(ds.SOPInstanceUID)], [path], [1]
    else:
        jobs = [(e, i) for e in range(echoes) for i in range(n)]
        write_order = order_rng.permutation(len(jobs)) if shuffle else np.arange(len(jobs))
        results: dict[int, tuple[str, Path, int]] = {}
        for j in write_order.tolist():
            e, i = jobs[j]
            number = e * n + rank[i] + 1
            uid = str(_uid("instance", key, e, kept[i]))
            ds = Dataset(dict(template.items()))  # shares the template's elements
            ds.add_new(0x00080018, "UI", uid)  # SOPInstanceUID
            ds.add_new(0x00200013, "IS", number)  # InstanceNumber
            ds.add_new(0x00200032, "DS", pos_text[i])  # ImagePositionPatient
            ds.add_new(0x00201041, "DS", slice_loc[i])  # SliceLocation
            if per_slice_rescale:
                ds.add_new(0x00281053, "DS", _ds(slopes[i]))  # RescaleSlope
                ds.add_new(0x00281052, "DS", _ds(icpts[i]))  # RescaleIntercept
            if echoes > 1:
                ds.add_new(0x00180086, "IS", e + 1)  # EchoNumbers
                ds.add_new(0x00180081, "DS", _ds(te[e]))  # EchoTime
            path = _file_name(dest, uid, shuffle, number)
            _save(ds, path, ts_uid, stored[e, i])
            results[j] = (uid, path, number)
        for j in range(len(jobs)):
            uid, path, number = results[j]
            sop_uids.append(uid)
            paths.append(path)
            numbers.append(number)

    truth: dict[str, float] | None = None
    if counts is not None:
        part = counts[kept]
        truth = _ct_truth(part, spacing_t) if modality == "CT" else _mr_truth(part, spacing_t)
    return SeriesInfo(
        study_uid=str(template.StudyInstanceUID),
        series_uid=str(template.SeriesInstanceUID),
        sop_uids=sop_uids,
        paths=paths,
        instance_numbers=numbers,
        positions=positions,
        orientation=tuple(float(v) for v in orientation),
        spacing=spacing_t,
        affine=affine,
        expected=expected[0],
        rescale=np.stack([slopes, icpts], axis=1),
        modality=modality,
        transfer_syntax=ts_uid,
        expected_by_echo={e + 1: expected[e] for e in range(echoes)} if echoes > 1 else None,
        frame_map=frame_map,
        ground_truth=truth,
    )


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for kw, v in values.items():
        setattr(ds, kw, v)
    return ds


def _enhanced(
    template: Dataset,
    *,
    modality: str,
    frames: Sequence[tuple[int, int]],
    pos_text: Sequence[Sequence[str]],
    slopes: npt.NDArray[np.float64],
    icpts: npt.NDArray[np.float64],
    per_frame_rescale: bool,
    echo_times: Sequence[float],
    spacing: tuple[float, float, float],
    when: _dt.datetime,
    acq_rank: Mapping[int, int],
) -> Dataset:
    """An Enhanced CT or MR Image dataset built from a single-frame template."""
    ds = Dataset(dict(template.items()))
    # Attributes that move into functional groups, or are not in the enhanced IODs.
    for kw in (
        "PixelSpacing",
        "SliceThickness",
        "SpacingBetweenSlices",
        "ImageOrientationPatient",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "KVP",
        "ConvolutionKernel",
        "XRayTubeCurrent",
        "ExposureTime",
        "GantryDetectorTilt",
        "EchoTime",
        "RepetitionTime",
        "InversionTime",
        "FlipAngle",
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "EchoTrainLength",
        "AcquisitionDate",
        "AcquisitionTime",
    ):
        if kw in ds:
            delattr(ds, kw)
    ct = modality == "CT"
    ds.SOPClassUID = EnhancedCTImageStorage if ct else EnhancedMRImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if ct else "M", "NONE"]
    ds.NumberOfFrames = len(frames)
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ContentQualification = "PRODUCT"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    rescale_type = "HU" if ct else "US"
    frame_type = ["ORIGINAL", "PRIMARY", "AXIAL" if ct else "M", "NONE"]
    dim_uid = _uid("dimension", ds.SeriesInstanceUID)
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dim_uid)]
    dims = [
        _item(
            DimensionOrganizationUID=dim_uid,
            DimensionIndexPointer=0x00209056,  # StackID
            FunctionalGroupPointer=0x00209111,  # FrameContentSequence
        ),
        _item(
            DimensionOrganizationUID=dim_uid,
            DimensionIndexPointer=0x00209057,  # InStackPositionNumber
            FunctionalGroupPointer=0x00209111,
        ),
    ]
    several_echoes = len(echo_times) > 1
    if several_echoes:
        dims.append(
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00189082,  # EffectiveEchoTime
                FunctionalGroupPointer=0x00189114,  # MREchoSequence
            )
        )
    ds.DimensionIndexSequence = dims

    shared = Dataset()
    shared.PixelMeasuresSequence = [
        _item(
            PixelSpacing=[_ds(spacing[1]), _ds(spacing[2])],
            SliceThickness=_ds(spacing[0]),
            SpacingBetweenSlices=_ds(spacing[0]),
        )
    ]
    shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=template.ImageOrientationPatient)]
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = [
            _item(
                RescaleIntercept=_ds(icpts[0]),
                RescaleSlope=_ds(slopes[0]),
                RescaleType=rescale_type,
            )
        ]
    if ct:
        shared.CTImageFrameTypeSequence = [_item(FrameType=frame_type)]
        shared.CTReconstructionSequence = [_item(ConvolutionKernel="Br40")]
        shared.CTXRayDetailsSequence = [_item(KVP="120")]
    else:
        shared.MRImageFrameTypeSequence = [_item(FrameType=frame_type)]
        shared.MRTimingAndRelatedParametersSequence = [
            _item(RepetitionTime="2300", FlipAngle="9", EchoTrainLength=1)
        ]
        if not several_echoes:
            shared.MREchoSequence = [_item(EffectiveEchoTime=float(echo_times[0]))]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for e, i in frames:
        fg = Dataset()
        r = acq_rank[i]
        t = (when + _dt.timedelta(seconds=0.5 * r)).strftime("%Y%m%d%H%M%S.%f")
        index = [1, r + 1] + ([e + 1] if several_echoes else [])
        fg.FrameContentSequence = [
            _item(
                StackID="1",
                InStackPositionNumber=r + 1,
                DimensionIndexValues=index,
                FrameAcquisitionDateTime=t,
                FrameReferenceDateTime=t,
                FrameAcquisitionDuration=500,
            )
        ]
        fg.PlanePositionSequence = [_item(ImagePositionPatient=list(pos_text[i]))]
        if per_frame_rescale:
            fg.PixelValueTransformationSequence = [
                _item(
                    RescaleIntercept=_ds(icpts[i]),
                    RescaleSlope=_ds(slopes[i]),
                    RescaleType=rescale_type,
                )
            ]
        if several_echoes:
            fg.MREchoSequence = [_item(EffectiveEchoTime=float(echo_times[e]))]
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


# --------------------------------------------------------------------------- archive

#: Patients of :func:`generate_archive`: names as hospitals hold them, with the
#: SpecificCharacterSet each is written in (None: the default repertoire).
_PATIENTS: Final[tuple[tuple[str, str | list[str] | None, str], ...]] = (
    ("Müller^Jürgen", "ISO_IR 100", "M"),
    ("山田^太郎", "ISO_IR 192", "M"),
    ("Li^Yu", None, "F"),
    ("Ödegård^Åsa", "ISO_IR 100", "F"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "M"),
    ("Núñez^José", "ISO_IR 192", "M"),
    ("Διονυσιος", "ISO_IR 126", "M"),
    ("Ng^A", None, "F"),
    ("כהן^שרה", "ISO_IR 138", "F"),
    ("Hong^Gildong=洪^吉洞=홍^길동", ["", "ISO 2022 IR 149"], "M"),
    ("O'Brien^Siobhán", "ISO_IR 192", "F"),
    ("Dupont-Lefèvre^Marie-Hélène", "ISO_IR 100", "F"),
    ("Wang^XiaoDong=王^小东", "GB18030", "M"),
    ("Smith^John^^Dr", None, "M"),
)

_CT_SCANNERS: Final = (
    ("SIEMENS", "SOMATOM Force", ("Br40", "Br59")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("STANDARD", "LUNG")),
    ("Philips", "Ingenuity CT", ("B", "YA")),
)
_MR_SCANNERS: Final = (
    ("SIEMENS", "MAGNETOM Skyra"),
    ("GE MEDICAL SYSTEMS", "SIGNA Premier"),
    ("Philips", "Ingenia"),
)
_HOSPITALS: Final = ("St. Synthetic Hospital", "Universitätsklinikum Synthstadt")

_CT_TRUTH: Final = ("lung_left_ml", "lung_right_ml", "lung_total_ml", "body_ml")
_MR_TRUTH: Final = ("gray_matter_ml", "white_matter_ml", "brain_ml", "csf_ml", "head_ml")


def _write_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Write one series of the archive and return its manifest row (runs in workers too)."""
    info = write_series(**job["kwargs"])
    row = {**job["row"], "StudyInstanceUID": info.study_uid, "SeriesInstanceUID": info.series_uid}
    row["n_instances"] = len(info.paths)
    row["n_slices"] = int(info.expected.shape[0])
    row.update(info.ground_truth or {})
    return row


def _archive_jobs(
    dest: Path,
    n_patients: int,
    seed: int,
    ct_shape: tuple[int, int, int],
    mr_shape: tuple[int, int, int],
) -> list[dict[str, Any]]:
    """Every series of the archive, as write_series arguments plus manifest fields."""
    rng = np.random.default_rng([seed, 100])
    first = _dt.date(2018, 1, 1)
    span = (_dt.date(2024, 12, 31) - first).days
    ct_spacing = (2.5, round(360.0 / ct_shape[1], 6), round(360.0 / ct_shape[2], 6))
    mr_spacing = (5.0, round(230.0 / mr_shape[1], 6), round(230.0 / mr_shape[2], 6))
    ids: set[str] = set()
    accessions: set[str] = set()
    jobs: list[dict[str, Any]] = []
    for p in range(n_patients):
        name, charset, sex = _PATIENTS[(p + seed) % len(_PATIENTS)]
        pid = f"{int(rng.integers(1, 10**8)):08d}"
        while pid in ids:
            pid = f"{int(rng.integers(1, 10**8)):08d}"
        ids.add(pid)
        birth = _dt.date(int(rng.integers(1935, 2001)), int(rng.integers(1, 13)), 1)
        birth += _dt.timedelta(days=int(rng.integers(0, 28)))
        patient: dict[str, object] = {
            "PatientName": name,
            "PatientID": pid,
            "IssuerOfPatientID": "SYNTH-MRN",
            "PatientBirthDate": birth.strftime("%Y%m%d"),
            "PatientSex": sex,
            "SpecificCharacterSet": charset,
        }
        hospital = _HOSPITALS[int(rng.integers(len(_HOSPITALS)))]
        if charset not in ("ISO_IR 100", "ISO_IR 192"):  # keep other texts encodable
            hospital = hospital.encode("ascii", "replace").decode().replace("?", "ae")
        n_studies = int(rng.integers(1, 4))
        days = sorted(rng.choice(span + 1, size=n_studies, replace=False).tolist())
        for s, day in enumerate(days):
            when = _dt.datetime.combine(first + _dt.timedelta(days=day), _dt.time(7, 30))
            when += _dt.timedelta(minutes=int(rng.integers(0, 10 * 60)))
            accession = f"{int(rng.integers(10**9, 10**10))}"
            while accession in accessions:
                accession = f"{int(rng.integers(10**9, 10**10))}"
            accessions.add(accession)
            kind = rng.random()
            with_ct, with_mr = kind < 0.75, kind >= 0.45
            study: dict[str, object] = {
                "StudyDate": when.strftime("%Y%m%d"),
                "StudyTime": when.strftime("%H%M%S"),
                "AccessionNumber": accession,
                "StudyID": str(s + 1),
                "StudyDescription": (
                    "CT Thorax / MR Kopf" if with_ct and with_mr else "CT Thorax" if with_ct else "MR Kopf"
                ),
                "ReferringPhysicianName": "Synthetic^Referrer",
                "InstitutionName": hospital,
            }
            study_uid = str(_uid("archive-study", seed, p, s))
            anatomy = int(np.random.default_rng([seed, p, s]).integers(2**31))
            common = {"dest": dest, "shuffle": True, "patient": patient, "study": study}
            base_row = {
                "PatientID": pid,
                "PatientName": name,
                "StudyDate": study["StudyDate"],
                "AccessionNumber": accession,
            }
            number = 1
            if with_ct:
                maker, model, (soft, sharp) = _CT_SCANNERS[int(rng.integers(len(_CT_SCANNERS)))]
                feet_first = bool(rng.random() < 0.3)
                for_uid = str(_uid("archive-for", seed, p, s))
                recons = [(ct_shape, ct_spacing, soft)]
                if rng.random() < 0.4:  # a second reconstruction: thicker slices, lung kernel
                    thick = (max(1, ct_shape[0] // 2), ct_shape[1], ct_shape[2])
                    recons.append((thick, (ct_spacing[0] * 2, *ct_spacing[1:]), sharp))
                for shape, spacing, kernel in recons:
                    description = f"Thorax {spacing[0]:g} {kernel}"
                    series: dict[str, object] = {
                        "SeriesNumber": number + 1,
                        "SeriesDescription": description,
                        "ProtocolName": "Thorax Routine",
                        "BodyPartExamined": "CHEST",
                        "Manufacturer": maker,
                        "ManufacturerModelName": model,
                        "ConvolutionKernel": kernel,
                        "FrameOfReferenceUID": for_uid,
                    }
                    jobs.append(
                        {
                            "kwargs": {
                                **common,
                                "modality": "CT",
                                "shape": shape,
                                "spacing": spacing,
                                "feet_first": feet_first,
                                "series": series,
                                "study_uid": study_uid,
                                "seed": anatomy,
                            },
                            "row": {
                                **base_row,
                                "Modality": "CT",
                                "SeriesNumber": number + 1,
                                "SeriesDescription": description,
                                "BodyPartExamined": "CHEST",
                                "Manufacturer": maker,
                                "ManufacturerModelName": model,
                                "ConvolutionKernel": kernel,
                                "SliceThickness": spacing[0],
                                "feet_first": feet_first,
                            },
                        }
                    )
                    number += 1
            if with_mr:
                maker, model = _MR_SCANNERS[int(rng.integers(len(_MR_SCANNERS)))]
                series = {
                    "SeriesNumber": number + 1,
                    "SeriesDescription": "t1_mprage_tra",
                    "ProtocolName": "Kopf T1 3D",
                    "BodyPartExamined": "HEAD",
                    "Manufacturer": maker,
                    "ManufacturerModelName": model,
                }
                jobs.append(
                    {
                        "kwargs": {
                            **common,
                            "modality": "MR",
                            "shape": mr_shape,
                            "spacing": mr_spacing,
                            "series": series,
                            "study_uid": study_uid,
                            "seed": anatomy,
                        },
                        "row": {
                            **base_row,
                            "Modality": "MR",
                            "SeriesNumber": number + 1,
                            "SeriesDescription": "t1_mprage_tra",
                            "BodyPartExamined": "HEAD",
                            "Manufacturer": maker,
                            "ManufacturerModelName": model,
                            "ConvolutionKernel": None,
                            "SliceThickness": mr_spacing[0],
                            "feet_first": False,
                        },
                    }
                )
    return jobs


def generate_archive(
    dest: Path | str,
    *,
    n_patients: int = 3,
    seed: int = 0,
    ct_shape: tuple[int, int, int] = (48, 96, 96),
    mr_shape: tuple[int, int, int] = (32, 64, 64),
    progress: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Write a synthetic hospital archive with known ground truth.

    Each patient has 1-3 studies between 2018 and 2024; a study holds a chest
    CT (some acquired feet first, sometimes with a second reconstruction of
    thicker slices and a lung kernel), a head MR, or both.  Patients carry
    names as hospitals hold them (accents, very short names, Japanese, Korean,
    Chinese, Greek and Hebrew in their own character sets, including ISO 2022
    escape sequences), 8-digit zero-padded PatientIDs, accession numbers, birth
    dates and sexes; scanners come from several manufacturers.  Files lie under
    hashed nested folders (``dest/ab/cd/abcd....dcm``) that say nothing about
    the patient, study or series.

    Parameters
    ----------
    dest : path-like
        Root folder of the archive (created if needed).  Writing the same archive
        twice into one folder raises ``FileExistsError``.
    n_patients : int
        Number of patients.
    seed : int
        Everything derives from it: equal seeds write identical archives.
    ct_shape, mr_shape : tuple of int
        ``(z, y, x)`` of the CT and MR series.  The field of view is fixed
        (360 mm for CT, 230 mm for MR), so larger shapes mean finer voxels.
    progress : bool
        Show a tqdm progress bar over the series.
    workers : int
        Write series in this many processes (``spawn``); 1 writes in this one,
        which is fastest for small archives.

    Returns
    -------
    pandas.DataFrame
        The manifest, one row per series: PatientID, PatientName,
        StudyInstanceUID, SeriesInstanceUID, Modality, StudyDate,
        AccessionNumber, SeriesNumber, SeriesDescription, BodyPartExamined,
        Manufacturer, ManufacturerModelName, ConvolutionKernel, SliceThickness,
        feet_first, n_instances, n_slices, and the phantom's ground truth
        (``lung_*_ml`` and ``body_ml`` for CT, ``*_matter_ml``, ``brain_ml``,
        ``csf_ml`` and ``head_ml`` for MR; NaN where it does not apply).  The
        CT rows (without names) are also written to ``dest/ground_truth.csv``.

    Examples
    --------
    >>> manifest = generate_archive(tmp_path, n_patients=2)  # doctest: +SKIP
    >>> manifest.groupby("Modality").size()  # doctest: +SKIP
    """
    from jipkit.progress import tqdm

    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    jobs = _archive_jobs(dest, n_patients, seed, ct_shape, mr_shape)
    rows: list[dict[str, Any]]
    with tqdm(total=len(jobs), desc="series", unit="series", disable=not progress) as bar:
        if workers == 1:
            rows = []
            for job in jobs:
                rows.append(_write_job(job))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                rows = []
                for row in pool.map(_write_job, jobs):  # keeps the job order
                    rows.append(row)
                    bar.update()
    columns = [
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "StudyDate",
        "AccessionNumber",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "Manufacturer",
        "ManufacturerModelName",
        "ConvolutionKernel",
        "SliceThickness",
        "feet_first",
        "n_instances",
        "n_slices",
        *_CT_TRUTH,
        *_MR_TRUTH,
    ]
    manifest = pd.DataFrame(rows).reindex(columns=columns)
    truth_columns = [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        *_CT_TRUTH,
        "n_slices",
        "SliceThickness",
        "ConvolutionKernel",
    ]
    ct = manifest.loc[manifest["Modality"] == "CT", truth_columns]
    ct.to_csv(dest / "ground_truth.csv", index=False, encoding="utf-8")
    return manifest
