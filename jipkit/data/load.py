"""Assemble a series' instances into a :class:`~jipkit.data.volume.Volume`.

Order comes from ImagePositionPatient projected on the slice normal (the cross
product of the row and column directions), never from file names or InstanceNumber.
Irregular geometry is detected and either refused with an error that names the cause
(mixed sizes or orientations, several images at one position) or loaded with a
:class:`GeometryWarning` that says what was done (missing slices, uneven spacing,
gantry tilt, duplicate instances).

Pixels are read by a fast path when an instance is simple enough (native little-endian,
one frame, one sample, known offset) and its file still has the size and modification
time the index recorded; otherwise by pydicom, with its decoder plugins.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from jipkit.data.volume import GeometryWarning, Volume
from jipkit.errors import AmbiguousSeriesError, DicomFileError, MixedSeriesError, NoPixelDataError

__all__ = ["SPLIT_ATTRIBUTES", "assemble"]

#: Attributes that tell apart images at one position, tried in this order.
SPLIT_ATTRIBUTES = (
    "EchoNumbers",
    "EchoTime",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "DiffusionBValue",
    "AcquisitionNumber",
    "ImageType",
)
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_POS_TOL = 1e-3  # mm: images closer than this along the normal share a position
_ORI_TOL = 1e-4


@dataclass
class _Frame:
    sop: str
    location: str
    frame: int  # -1: a single-frame instance
    position: npt.NDArray[np.float64] | None
    orientation: npt.NDArray[np.float64] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    info: dict[str, Any]


def _floats(text: Any, n: int) -> npt.NDArray[np.float64] | None:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    try:
        v = np.array([float(x) for x in str(text).split("\\")], dtype=float)
    except ValueError:
        return None
    return v if v.size == n else None


def _num(v: Any, default: float) -> float:
    if v is None:
        return default
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if np.isnan(f) else f


def _pick_duplicates(rows: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """One row per SOPInstanceUID: the first existing, unchanged file in path order."""
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_uid.setdefault(r["SOPInstanceUID"], []).append(r)
    out = []
    dups = 0
    for group in by_uid.values():
        if len(group) > 1:
            dups += 1
            group.sort(key=lambda r: (not _unchanged(r), str(r["location"])))
        out.append(group[0])
    if dups:
        notes.append(
            f"{dups} SOPInstanceUID(s) occur in more than one file; for each, the first unchanged file "
            "in path order was loaded (see find_instances(...).Duplicates)."
        )
    return out


def _unchanged(r: Mapping[str, Any]) -> bool:
    try:
        st = os.stat(r["location"])
    except OSError:
        return False
    return bool(st.st_size == r.get("file_size") and st.st_mtime_ns == r.get("mtime_ns"))


def _frames_of(row: dict[str, Any]) -> list[_Frame]:
    nframes = int(_num(row.get("NumberOfFrames"), 1))
    if nframes <= 1:
        return [
            _Frame(
                sop=row["SOPInstanceUID"],
                location=row["location"],
                frame=-1,
                position=_floats(row.get("ImagePositionPatient"), 3),
                orientation=_floats(row.get("ImageOrientationPatient"), 6),
                pixel_spacing=_spacing(row.get("PixelSpacing")),
                slope=_num(row.get("RescaleSlope"), 1.0),
                intercept=_num(row.get("RescaleIntercept"), 0.0),
                info=row,
            )
        ]
    return _enhanced_frames(row, nframes)


def _spacing(text: Any) -> tuple[float, float] | None:
    v = _floats(text, 2)
    return (float(v[0]), float(v[1])) if v is not None else None


def _enhanced_frames(row: dict[str, Any], nframes: int) -> list[_Frame]:
    """Per-frame geometry of a multi-frame (enhanced) instance, from its functional groups."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(row["location"], stop_before_pixels=True)
        except Exception as err:
            raise DicomFileError(
                f"Could not read the multi-frame instance {row['SOPInstanceUID']} at {row['location']}: "
                f"{type(err).__name__}: {err}. Check the file, then run `jip index` on it again."
            ) from err
    shared = ds.get("SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence") or []

    def get(i: int, seq: str, kw: str) -> Any:
        for groups in ((per[i] if i < len(per) else None), (shared[0] if shared else None)):
            if groups is not None and seq in groups and groups[seq] and kw in groups[seq][0]:
                return groups[seq][0].get(kw)
        return ds.get(kw)

    frames = []
    for i in range(nframes):
        pos = get(i, "PlanePositionSequence", "ImagePositionPatient")
        ori = get(i, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = get(i, "PixelMeasuresSequence", "PixelSpacing")
        info = dict(row)
        for kw in ("EchoTime", "TemporalPositionIndex", "TriggerTime"):
            info.setdefault(kw, None)
        fc = get(i, "FrameContentSequence", "TemporalPositionIndex")
        if fc is not None:
            info["TemporalPositionIdentifier"] = int(fc)
        echo = get(i, "MREchoSequence", "EffectiveEchoTime")
        if echo is not None:
            info["EchoTime"] = float(echo)
        frames.append(
            _Frame(
                sop=row["SOPInstanceUID"],
                location=row["location"],
                frame=i,
                position=np.array([float(x) for x in pos]) if pos is not None else None,
                orientation=np.array([float(x) for x in ori]) if ori is not None else None,
                pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else None,
                slope=_num(get(i, "PixelValueTransformationSequence", "RescaleSlope"), 1.0),
                intercept=_num(get(i, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0),
                info=info,
            )
        )
    return frames


def _check_same(frames: Sequence[_Frame], series_uid: str) -> None:
    for kw in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PixelRepresentation"):
        values = sorted({_num(f.info.get(kw), -1) for f in frames})
        if len(values) > 1:
            shown = ", ".join(str(int(v)) for v in values)
            raise MixedSeriesError(
                f"Series {series_uid} mixes images with different {kw} ({shown}); one volume needs "
                "them equal. Load a subset with find_instances(...) and load_instances(...), "
                f"selecting one {kw}."
            )
    oris = [f.orientation for f in frames if f.orientation is not None]
    if oris and any(not np.allclose(o, oris[0], atol=_ORI_TOL) for o in oris):
        n = len({tuple(np.round(o, 3)) for o in oris})
        raise MixedSeriesError(
            f"Series {series_uid} mixes {n} different ImageOrientationPatient values (for example a "
            "localizer with three planes); one volume needs one orientation. Select the instances of "
            "one orientation with find_instances(...) and load them with load_instances(...)."
        )
    sps = {f.pixel_spacing for f in frames if f.pixel_spacing is not None}
    if len(sps) > 1:
        raise MixedSeriesError(
            f"Series {series_uid} mixes PixelSpacing values {sorted(sps)}; one volume needs one. "
            "Select one with find_instances(PixelSpacing=...) and load_instances(...)."
        )


def _split_attribute(frames: Sequence[_Frame], keys: npt.NDArray[np.float64]) -> tuple[str | None, list[Any]]:
    """The attribute whose values differ between frames at one position."""
    order = np.argsort(keys, kind="stable")
    groups: list[list[_Frame]] = []
    last = None
    for i in order:
        if last is None or abs(keys[i] - last) > _POS_TOL:
            groups.append([])
        groups[-1].append(frames[i])
        last = keys[i]
    crowded = [g for g in groups if len(g) > 1]
    for kw in SPLIT_ATTRIBUTES:
        if all(len({str(f.info.get(kw)) for f in g}) == len(g) for g in crowded):
            values = sorted({f.info.get(kw) for f in frames}, key=str)
            return kw, values
    return None, []


def plan(
    rows: Sequence[dict[str, Any]], series_uid: str, split_by: str | None = None
) -> tuple[dict[Any, list[_Frame]], list[str]]:
    """Frames of a series, grouped by ``split_by`` (one group when None), and notes."""
    notes: list[str] = []
    images = [r for r in rows if r.get("Rows") is not None and not _isnan(r.get("Rows"))]
    if not images:
        raise NoPixelDataError(
            f"Series {series_uid} holds no images ({len(rows)} instance(s) without pixel data, for "
            "example reports or presentation states). Choose an image series: "
            "find_series(Modality=...) lists them."
        )
    images = _pick_duplicates(images, notes)
    frames = [f for r in images for f in _frames_of(r)]
    _check_same(frames, series_uid)
    if split_by is not None:
        groups: dict[Any, list[_Frame]] = {}
        for f in frames:
            groups.setdefault(f.info.get(split_by), []).append(f)
        return groups, notes
    return {None: frames}, notes


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _order(frames: list[_Frame], series_uid: str, notes: list[str]) -> tuple[list[_Frame], dict[str, Any]]:
    """Sort frames along the slice normal; return them and the geometry."""
    ori = next((f.orientation for f in frames if f.orientation is not None), None)
    if ori is None:
        ori = np.array([1.0, 0, 0, 0, 1, 0])
        notes.append("No ImageOrientationPatient: assumed axial (1,0,0,0,1,0).")
    row_dir, col_dir = ori[:3] / np.linalg.norm(ori[:3]), ori[3:] / np.linalg.norm(ori[3:])
    normal = np.cross(row_dir, col_dir)
    have_pos = all(f.position is not None for f in frames)
    if not have_pos:
        if len(frames) > 1:
            notes.append("Some images have no ImagePositionPatient: ordered by InstanceNumber instead.")
        keys = np.array([_num(f.info.get("InstanceNumber"), 0) for f in frames], dtype=float)
        if len(frames) > 1:
            frames = [frames[i] for i in np.argsort(keys, kind="stable")]
        pos = np.zeros((len(frames), 3))
    else:
        pos0 = np.array([f.position for f in frames], dtype=float)
        keys = pos0 @ normal
        if len(frames) > 1 and np.min(np.diff(np.sort(keys))) <= _POS_TOL:
            kw, values = _split_attribute(frames, keys)
            n = len(frames) - len(np.unique(np.round(keys / _POS_TOL)))
            if kw is not None:
                raise AmbiguousSeriesError(
                    f"Series {series_uid} has several images at one position ({n} extra), told apart by "
                    f"{kw} (values {values}). Load one with load_series(uid, split_by={kw!r}), which "
                    f"returns a dict {{{kw} value: Volume}}.",
                    attribute=kw,
                    values=values,
                )
            raise AmbiguousSeriesError(
                f"Series {series_uid} has several images at one position ({n} extra) and no attribute "
                f"among {', '.join(SPLIT_ATTRIBUTES)} tells them apart. Select the instances you want "
                "with find_instances(...) and load_instances(...)."
            )
        idx = np.argsort(keys, kind="stable")
        frames = [frames[i] for i in idx]
        pos = pos0[idx]
        keys = keys[idx]
    ps = next((f.pixel_spacing for f in frames if f.pixel_spacing is not None), None)
    if ps is None:
        ps = (1.0, 1.0)
        notes.append("No PixelSpacing: assumed 1 mm.")
    step_vec = None
    dz = _num(frames[0].info.get("SliceThickness"), 1.0) if len(frames) == 1 else 1.0
    if len(frames) > 1 and have_pos:
        steps = np.diff(keys)
        dz = float(np.median(steps))
        gaps = np.where(steps > 1.5 * dz)[0]
        if gaps.size:
            missing = int(sum(round(steps[g] / dz) - 1 for g in gaps))
            where = ", ".join(f"{keys[g]:.2f}..{keys[g + 1]:.2f} mm" for g in gaps[:3])
            notes.append(
                f"About {missing} slice(s) missing (gaps at {where} along the normal, where "
                f"{dz:.3g} mm steps are expected). Slices were not interpolated: Volume.positions "
                "holds each slice's true position; the affine assumes even spacing."
            )
        elif np.max(np.abs(steps - dz)) > max(0.01, 0.01 * dz):
            notes.append(
                f"Uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm (median "
                f"{dz:.4g}). The affine uses the median; Volume.positions holds the true positions."
            )
        step_vec = (pos[-1] - pos[0]) / (len(frames) - 1)
        tilt = float(np.degrees(np.arccos(min(1.0, abs(step_vec @ normal) / np.linalg.norm(step_vec)))))
        if tilt > 0.05:
            notes.append(
                f"Gantry tilt of {tilt:.2f} degrees: slices are shifted against each other. The volume "
                "was not resampled; its affine is sheared so each voxel maps to where it was acquired."
            )
        else:
            step_vec = None
    geometry = {
        "spacing": (abs(dz), float(ps[0]), float(ps[1])),
        "direction": np.stack([row_dir, col_dir, normal], axis=1),
        "positions": pos,
        "step": step_vec,
    }
    return frames, geometry


# --- pixels -----------------------------------------------------------------------


def _stored_dtype(info: Mapping[str, Any]) -> np.dtype[Any] | None:
    bits = int(_num(info.get("BitsAllocated"), 0))
    signed = int(_num(info.get("PixelRepresentation"), 0)) == 1
    if bits not in (8, 16, 32):
        return None
    return np.dtype(("<i" if signed else "<u") + str(bits // 8))


def _fast_ok(f: _Frame) -> bool:
    i = f.info
    if f.frame != -1 or i.get("TransferSyntaxUID") not in _NATIVE or i.get("pixel_offset") is None:
        return False
    if _isnan(i.get("pixel_offset")) or int(_num(i.get("SamplesPerPixel"), 1)) != 1:
        return False
    dtype = _stored_dtype(i)
    if dtype is None:
        return False
    bits, stored = int(_num(i.get("BitsAllocated"), 0)), int(_num(i.get("BitsStored"), 0))
    if stored != bits and int(_num(i.get("PixelRepresentation"), 0)) == 1:
        return False  # pydicom sign-extends from BitsStored: leave that to it
    n = int(i["Rows"]) * int(i["Columns"]) * dtype.itemsize
    return int(_num(i.get("pixel_length"), -1)) in (n, n + 1)


def _read_fast(f: _Frame, out: npt.NDArray[Any]) -> bool:
    """Read one slice's bytes into ``out``; False when the file changed since indexing."""
    i = f.info
    try:
        fd = os.open(f.location, os.O_RDONLY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_size != i.get("file_size") or st.st_mtime_ns != i.get("mtime_ns"):
            return False
        view = memoryview(out.reshape(-1).view(np.uint8).data)
        got = os.preadv(fd, [view], int(i["pixel_offset"]))
        return got == view.nbytes
    finally:
        os.close(fd)


def _read_pydicom(location: str, frame: int) -> npt.NDArray[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(location)
            if frame >= 0:
                from pydicom.pixels.utils import pixel_array

                arr = pixel_array(ds, index=frame)
            else:
                arr = ds.pixel_array
        except Exception as err:
            raise DicomFileError(
                f"Could not decode the pixels of {location}: {type(err).__name__}: {err}. If the "
                "transfer syntax is compressed, check that its pydicom decoder plugin is installed "
                "(pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls)."
            ) from err
    return np.asarray(arr)


def read_frames(frames: Sequence[_Frame], threads: int = 4) -> npt.NDArray[Any]:
    """The stored values of ``frames``, stacked ``[z, y, x(, samples)]``."""
    first = frames[0].info
    rows, cols = int(first["Rows"]), int(first["Columns"])
    fast = all(_fast_ok(f) for f in frames)
    if fast:
        dtype = _stored_dtype(first)
        assert dtype is not None
        out = np.empty((len(frames), rows, cols), dtype=dtype)

        def one(k: int) -> None:
            if not _read_fast(frames[k], out[k]):
                out[k] = _read_pydicom(frames[k].location, frames[k].frame)

        if len(frames) >= 8 and threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(len(frames))))
        else:
            for k in range(len(frames)):
                one(k)
        return out
    slices: list[npt.NDArray[Any]] = []
    cache: dict[str, npt.NDArray[Any]] = {}
    for f in frames:
        if f.frame >= 0:
            if f.location not in cache:
                cache.clear()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        cache[f.location] = np.asarray(pydicom.dcmread(f.location).pixel_array)
                    except Exception as err:
                        raise DicomFileError(
                            f"Could not decode the pixels of {f.location}: {type(err).__name__}: {err}."
                        ) from err
            slices.append(cache[f.location][f.frame])
        else:
            slices.append(_read_pydicom(f.location, -1))
    return np.stack(slices)


def _rescale(stored: npt.NDArray[Any], frames: Sequence[_Frame]) -> npt.NDArray[Any]:
    slopes = np.array([f.slope for f in frames])
    inters = np.array([f.intercept for f in frames])
    if np.all(slopes == 1) and np.all(inters == 0):
        return stored
    if np.all(slopes == 1) and np.all(inters == inters[0]) and float(inters[0]).is_integer():
        b = int(inters[0])
        if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.size:
            lo, hi = int(stored.min()) + b, int(stored.max()) + b
            if lo >= -32768 and hi <= 32767:  # Hounsfield units fit in int16: no float copy
                if stored.dtype == np.int16:
                    stored += np.int16(b)  # in place
                    return stored
                wide = stored.astype(np.int32)
                wide += b
                return wide.astype(np.int16)
    out: npt.NDArray[np.float32] = stored.astype(np.float32)
    shape = (-1,) + (1,) * (out.ndim - 1)
    out *= slopes.astype(np.float32).reshape(shape)
    out += inters.astype(np.float32).reshape(shape)
    return out


def assemble(
    rows: Sequence[dict[str, Any]], series_uid: str, split_by: str | None = None
) -> Volume | dict[Any, Volume]:
    """Build a Volume (or, with ``split_by``, a dict of them) from instance rows."""
    groups, notes = plan(rows, series_uid, split_by)
    vols: dict[Any, Volume] = {}
    for key, frames in groups.items():
        vnotes = list(notes)
        ordered, geo = _order(frames, series_uid, vnotes)
        stored = read_frames(ordered)
        array = _rescale(stored, ordered)
        info = ordered[0].info
        vol = Volume(
            array=array,
            spacing=geo["spacing"],
            origin=geo["positions"][0].copy(),
            direction=geo["direction"],
            positions=geo["positions"],
            sop_instance_uids=[f.sop for f in ordered],
            locations=[f.location for f in ordered],
            series_instance_uid=series_uid,
            study_instance_uid=str(info.get("StudyInstanceUID") or ""),
            modality=str(info.get("Modality") or ""),
            notes=vnotes,
            _slice_step=geo["step"],
        )
        for n in vnotes:
            warnings.warn(f"Series {series_uid}: {n}", GeometryWarning, stacklevel=3)
        vols[key] = vol
    if split_by is None:
        return vols[None]
    return vols
