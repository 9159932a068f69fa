"""Benchmark 1: load a 512x512x300 uncompressed CT from local files into a volume.

jipkit (the series indexed once, then ``Site.load_series``) against ``cat`` of the same
files to /dev/null (the raw read rate), pydicom (``dcmread`` + ``pixel_array`` + sort by
position + stack) and SimpleITK's ``ImageSeriesReader``; warm cache, then cold where the
page cache can be dropped.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK as sitk

from jipkit.config import SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import write_series

from ._common import Context, Method, Row, Table, Target, drop_caches, interleave, median, speedup

__all__ = ["run"]

JIP = "jipkit Site.load_series"
CAT = "cat > /dev/null"
PYDICOM = "pydicom dcmread+pixel_array+sort+stack"
SITK = "SimpleITK ImageSeriesReader"
SITK_SORTED = "SimpleITK, file names pre-sorted"


def _cat(files: Sequence[Path]) -> None:
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def _pydicom_volume(files: Sequence[Path]) -> npt.NDArray[np.int16]:
    datasets = [pydicom.dcmread(f) for f in files]
    ori = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(ori[:3], ori[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    return np.stack([ds.pixel_array for ds in datasets])


_sitk: Any = sitk  # SimpleITK's wrappers are untyped


def _sitk_names(folder: Path, series_uid: str) -> Sequence[str]:
    """The series' files in slice order, found by GDCM (recursively)."""
    names: Sequence[str] = _sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
        str(folder), series_uid, False, True
    )
    return names


def _sitk_read(names: Sequence[str]) -> object:
    reader = _sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return reader.Execute()


def _methods(site: Site, series_uid: str, files: Sequence[Path], folder: Path) -> list[Method]:
    names = _sitk_names(folder, series_uid)

    def jip() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            site.load_series(series_uid)

    return [
        Method(CAT, lambda: _cat(files)),
        Method(JIP, jip),
        Method(PYDICOM, lambda: _pydicom_volume(files)),
        Method(SITK, lambda: _sitk_read(_sitk_names(folder, series_uid))),
        Method(SITK_SORTED, lambda: _sitk_read(names)),
    ]


def _table(title: str, times: dict[str, list[float]], megabytes: float, cold: bool) -> Table:
    table = Table(title)
    for name in (CAT, PYDICOM, SITK, SITK_SORTED):
        table.add(Row(name, megabytes / median(times[name]), "MB/s"))
    jip = megabytes / median(times[JIP])
    goals = {"cat": (CAT, 0.5), "SimpleITK": (SITK, 20.0), "pydicom": (PYDICOM, None)}
    for vs, (name, goal) in goals.items():
        target = Target(">=", goal) if goal is not None and not cold else None
        table.add(Row(JIP, jip, "MB/s", speedup(times[JIP], times[name]), vs, target))
    return table


def run(ctx: Context) -> list[Table]:
    """Write the CT, index it once, then time each reader warm and (if possible) cold."""
    z, y, x = ctx.sizes.load_shape
    folder = ctx.folder("load-ct")
    ctx.say(f"writing a {x}x{y}x{z} CT with shuffled file names")
    info = write_series(folder / "files", shape=(z, y, x), feet_first=True, shuffle=True, seed=7)
    files = sorted(info.paths, key=str)  # hashed names: an order that says nothing
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    site = Site(SiteConfig(name="bench", index_path=folder / "index.sqlite", cache_dir=folder / "cache"))
    site.index_paths([folder / "files"], progress=False)
    methods = _methods(site, info.series_uid, files, folder / "files")
    rounds = ctx.sizes.load_rounds
    ctx.say(f"warm cache: {rounds} rounds of {len(methods)} readers over {megabytes:.1f} MB")
    warm = interleave(methods, rounds, warmup=True)
    shape = f"{x}x{y}x{z}"
    tables = [
        _table(f"load: {shape} CT from local files, warm cache ({rounds} rounds)", warm, megabytes, False)
    ]
    tables[0].notes.append(
        f"{len(files)} files, {megabytes:.1f} MB; figures are MB/s of file bytes; jipkit indexed the "
        "folder beforehand (untimed); SimpleITK as usually called: GetGDCMSeriesFileNames (scans and "
        "sorts the files) + Execute; 'pre-sorted': Execute on file names found beforehand."
    )
    ctx.run_profile("load_series, warm", next(m.run for m in methods if m.name == JIP))
    if ctx.cold and drop_caches():
        cold_rounds = ctx.sizes.cold_rounds
        ctx.say(f"cold cache: {cold_rounds} rounds, page cache dropped before each read")
        cold = interleave([Method(m.name, m.run, drop_caches) for m in methods], cold_rounds)
        tables.append(_table(f"load: {shape} CT, cold cache ({cold_rounds} rounds)", cold, megabytes, True))
        tables[-1].notes.append("page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before every read")
    site.index.close()
    return tables
