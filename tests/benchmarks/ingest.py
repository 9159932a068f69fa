"""Benchmark 2: index ingest rate (files/s) on many small DICOM files.

jipkit's header readers in one process (:func:`jipkit.data.headers.read_header`, built
on pydicom, which loading from a PACS uses, and
:func:`jipkit.data.fastheader.read_header_fast`, which ingest uses) and the full
:func:`jipkit.data.ingest.index_paths` (headers + SQLite writes, 1 and 2 worker
processes) against pydicom ``dcmread(stop_before_pixels=True)`` and ``gdcm.Scanner``
scanning the same attributes jipkit indexes.  The cohort is split into one folder per
round, so every round reads files no method has indexed before (all in the page cache).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import gdcm
import pydicom
from pydicom.datadict import tag_for_keyword

from jipkit.data.fastheader import read_header_fast
from jipkit.data.headers import read_header
from jipkit.data.index import Index
from jipkit.data.ingest import index_paths
from jipkit.data.schema import ATTRIBUTES

from ._cohort import plan_cohort, write_cohort
from ._common import Context, Method, Row, Table, interleave, median, speedup

__all__ = ["run"]

PYDICOM = "pydicom dcmread(stop_before_pixels)"
GDCM = "gdcm.Scanner (jipkit's tags)"
HEADER = "jipkit read_header (pydicom)"
FAST = "jipkit read_header_fast"
INDEX1 = "jipkit index_paths workers=1"
INDEX2 = "jipkit index_paths workers=2"


def _gdcm_tags() -> list[gdcm.Tag]:
    keywords = [k for level in ATTRIBUTES.values() for k in level] + ["SpecificCharacterSet"]
    tags = [tag_for_keyword(k) for k in keywords]
    return [gdcm.Tag(t >> 16, t & 0xFFFF) for t in tags if t is not None]


def _gdcm_scan(files: Sequence[str], tags: Sequence[gdcm.Tag]) -> list[dict[int, str]]:
    """Scan the files and read every tag's value out, as jipkit's records hold them."""
    scanner = gdcm.Scanner()
    for tag in tags:
        scanner.AddTag(tag)
    if not scanner.Scan(list(files)):
        raise RuntimeError("gdcm.Scanner failed")
    return [{k: scanner.GetValue(f, tag) for k, tag in enumerate(tags)} for f in files]


def _pydicom_scan(files: Sequence[str]) -> None:
    for f in files:
        pydicom.dcmread(f, stop_before_pixels=True)


def _read_headers(files: Sequence[str], reader: Callable[[str], object] = read_header) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            reader(f)


class _Round:
    """The folder of the current round, and a fresh index for each index_paths run."""

    def __init__(self, folders: Sequence[Path], work: Path):
        self.folders = folders
        self.files: list[list[str]] = [_files(f) for f in folders]
        self.work = work
        self.current = 0
        self.index: Index | None = None
        self._made = 0

    def start(self, r: int) -> None:
        self.current = r % len(self.folders)

    def fresh_index(self) -> None:
        if self.index is not None:
            self.index.close()
        self._made += 1
        self.index = Index(self.work / f"index-{self._made}.sqlite")

    def index_paths(self, workers: int) -> None:
        assert self.index is not None
        index_paths(self.index, [self.folders[self.current]], workers=workers, progress=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(Path(d, n)) for d, _, names in os.walk(folder) for n in names)


def _methods(state: _Round) -> list[Method]:
    tags = _gdcm_tags()
    return [
        Method(PYDICOM, lambda: _pydicom_scan(state.files[state.current])),
        Method(GDCM, lambda: _gdcm_scan(state.files[state.current], tags)),
        Method(HEADER, lambda: _read_headers(state.files[state.current])),
        Method(FAST, lambda: _read_headers(state.files[state.current], read_header_fast)),
        Method(INDEX1, lambda: state.index_paths(1), state.fresh_index),
        Method(INDEX2, lambda: state.index_paths(2), state.fresh_index),
    ]


def _table(times: dict[str, list[float]], per_round: int, rounds: int, total: int) -> Table:
    table = Table(f"ingest: {total:,} small instances, {per_round:,} files per round ({rounds} rounds)")
    rate = {name: per_round / median(t) for name, t in times.items()}
    table.add(Row(PYDICOM, rate[PYDICOM], "files/s"))
    table.add(Row(GDCM, rate[GDCM], "files/s"))
    for name in (HEADER, FAST, INDEX1, INDEX2):
        for vs, base in (("pydicom", PYDICOM), ("gdcm", GDCM)):
            table.add(Row(name, rate[name], "files/s", speedup(times[name], times[base]), vs))
    per_process = [2 * t for t in times[INDEX2]]
    table.add(
        Row(
            f"{INDEX2}, per process",
            rate[INDEX2] / 2,
            "files/s",
            speedup(per_process, times[PYDICOM]),
            "pydicom",
        )
    )
    table.notes.append(
        "warm page cache; gdcm's figure includes reading every value out of the scanner; index_paths "
        "starts from an empty index each run and includes walking the folder, SQLite writes and (workers=2) "
        "starting the worker processes"
    )
    return table


def run(ctx: Context) -> list[Table]:
    """Write the cohort (one folder per round), then time every reader on each folder."""
    rounds = ctx.sizes.ingest_rounds
    total = ctx.sizes.ingest_files
    per_round = total // rounds
    ctx.say(f"writing {per_round * rounds:,} small instances (16x16) in {rounds} folders")
    folders = []
    for r in range(rounds):
        folder = ctx.folder(f"cohort-{r}")
        write_cohort(folder, plan_cohort(per_round, seed=r), seed=r)
        folders.append(folder)
    state = _Round(folders, ctx.folder("indexes"))
    methods = _methods(state)
    ctx.say(f"{rounds} rounds of {len(methods)} readers, {per_round:,} files each")
    times = interleave(methods, rounds, on_round=state.start)
    if state.index is not None:
        state.index.close()
    if ctx.profile:
        state.start(0)
        ctx.run_profile("read_header_fast", lambda: _read_headers(state.files[0], read_header_fast))
        state.fresh_index()
        ctx.run_profile("index_paths workers=1", lambda: state.index_paths(1))
    return [_table(times, per_round, rounds, per_round * rounds)]
