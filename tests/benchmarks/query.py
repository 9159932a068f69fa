"""Benchmark 3a: cohort query latency on an index of 1,000,000 instances.

The index is synthesised straight into jipkit's SQLite tables (about 2,000 patients x
5 studies x 4 series, 25 instances per series on average, sizes from single
localizers to 140-slice volumes, studies from 2010 to 2024), in one transaction.
jipkit's ``Site.find_*`` (DICOM matching -> SQL -> DataFrame) is timed against the same
selection written by hand in SQL and run with :mod:`sqlite3` (stored columns only, no
DataFrame): the ratio shows what jipkit's layer costs; the target is absolute.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jipkit.config import SiteConfig
from jipkit.data.index import Index
from jipkit.data.site import Site

from ._cohort import pick_name, study_date
from ._common import Context, Method, Row, Table, Target, interleave, median, speedup

__all__ = ["build_index", "queries", "run"]

_UID = "1.2.826.0.1.3680043.10.543"
_MODALITIES = ("CT", "MR", "CR", "DX", "US", "PT", "NM", "SR", "KO")
_MODALITY_P = (0.35, 0.25, 0.10, 0.08, 0.08, 0.05, 0.03, 0.03, 0.03)
_VOLUME = {"CT", "MR", "PT", "NM"}
_MAKERS = (("SIEMENS", "SOMATOM Force"), ("GE MEDICAL SYSTEMS", "Revolution CT"), ("Philips", "Ingenia"))
_BODY = ("CHEST", "ABDOMEN", "HEAD", "PELVIS", "KNEE", "SPINE")
_CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"

_P_COLS = ["patient_key", "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"]
_ST_COLS = [
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "PatientAge",
    "patient_key",
]
_SE_COLS = [
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StudyInstanceUID",
    "NumberOfSeriesRelatedInstances",
]
_I_COLS = [
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ImageType",
    "SeriesInstanceUID",
    "location",
    "TransferSyntaxUID",
    "pixel_offset",
    "pixel_length",
    "file_size",
    "mtime_ns",
]


def _series_size(rng: np.random.Generator, modality: str) -> int:
    """25 instances on average: many 1-3 image series, some 100-140 slice volumes."""
    if modality not in _VOLUME:
        return int(rng.integers(1, 4))
    kind = rng.random()
    if kind < 0.30:
        return int(rng.integers(1, 4))
    if kind < 0.80:
        return int(rng.integers(10, 41))
    return int(rng.integers(100, 141))


@dataclass
class _Rows:
    patients: list[tuple[Any, ...]]
    studies: list[tuple[Any, ...]]
    series: list[tuple[Any, ...]]


def _plan(n_instances: int, seed: int) -> _Rows:
    """Patient, study and series rows whose series sizes add up to ``n_instances``."""
    rng = np.random.default_rng([seed, 31])
    rows = _Rows([], [], [])
    total = 0
    p = 0
    while total < n_instances:
        p += 1
        birth = 1930 + int(rng.integers(0, 75))
        sex = "F" if rng.random() < 0.5 else "M"
        rows.patients.append((p, f"{p:08d}", "SITE-MRN", pick_name(rng), f"{birth}0615", sex))
        for s in range(int(rng.integers(1, 10))):
            st_uid = f"{_UID}.1.{p}.{s}"
            date = study_date(rng)
            age = f"{int(date[:4]) - birth:03d}Y"
            rows.studies.append((st_uid, date, "083000", f"A{p:07d}{s}", str(s + 1), "Routine", age, p))
            for k in range(int(rng.integers(1, 8))):
                modality = str(rng.choice(_MODALITIES, p=_MODALITY_P))
                n = min(_series_size(rng, modality), n_instances - total)
                maker, model = _MAKERS[int(rng.integers(len(_MAKERS)))]
                body = _BODY[int(rng.integers(len(_BODY)))]
                se_uid = f"{_UID}.2.{p}.{s}.{k}"
                description = f"{modality} {body.lower()} {k + 1}"
                hospital = "Universitätsklinikum Synthstadt"
                rows.series.append(
                    (se_uid, modality, k + 1, description, body, date, maker, model, hospital, st_uid, n)
                )
                total += n
                if total >= n_instances:
                    return rows
    return rows


def _instances(series: Sequence[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Instance rows for every series: realistic geometry, file layout and paths."""
    for se in series:
        se_uid, n = se[0], se[-1]
        folder = f"/data/archive/{se_uid[-12:].replace('.', '/')}"
        for i in range(n):
            yield (
                f"{se_uid}.{i + 1}",
                _CT_CLASS,
                i + 1,
                f"-250\\-250\\{-400 + 1.25 * i:g}",
                "1\\0\\0\\0\\1\\0",
                "0.9765625\\0.9765625",
                1.25,
                512,
                512,
                1,
                "MONOCHROME2",
                16,
                16,
                1,
                1.0,
                -1024.0,
                "ORIGINAL\\PRIMARY\\AXIAL",
                se_uid,
                f"{folder}/IM{i + 1:05d}.dcm",
                "1.2.840.10008.1.2.1",
                1380,
                524288,
                525668,
                1_700_000_000_000_000_000 + i,
            )


def _insert(con: sqlite3.Connection, table: str, cols: Sequence[str], rows: Any) -> None:
    marks = ", ".join("?" * len(cols))
    con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)


def build_index(path: Path, n_instances: int, seed: int = 0) -> dict[str, int]:
    """Create a jipkit index at ``path`` holding ``n_instances`` synthetic instances."""
    rows = _plan(n_instances, seed)
    index = Index(path)
    with index.transaction() as con:
        _insert(con, "patients", _P_COLS, rows.patients)
        _insert(con, "studies", _ST_COLS, rows.studies)
        _insert(con, "series", _SE_COLS, rows.series)
        _insert(con, "instances", _I_COLS, _instances(rows.series))
    counts = index.counts()
    index.close()
    return counts


@dataclass(frozen=True)
class Query:
    """A query as jipkit's API asks it, and the same selection in hand-written SQL."""

    label: str
    call: str
    jip: Callable[[Site], Any]
    sql: str
    params: tuple[Any, ...] = ()


_SERIES_SQL = (
    "SELECT p.PatientID, p.PatientName, p.PatientBirthDate, p.PatientSex, st.StudyInstanceUID, st.StudyDate, "
    "st.StudyTime, st.AccessionNumber, st.StudyDescription, se.SeriesInstanceUID, se.Modality, "
    "se.SeriesNumber, se.SeriesDescription, se.BodyPartExamined, se.Manufacturer, "
    "se.NumberOfSeriesRelatedInstances FROM series se "
    "JOIN studies st ON st.StudyInstanceUID = se.StudyInstanceUID "
    "JOIN patients p ON p.patient_key = st.patient_key WHERE "
)
_ORDER = " ORDER BY p.PatientID, st.StudyDate, st.StudyInstanceUID, se.SeriesNumber"


def _one_series(con: sqlite3.Connection) -> str:
    row = con.execute(
        "SELECT SeriesInstanceUID FROM series WHERE NumberOfSeriesRelatedInstances >= 100 "
        "ORDER BY SeriesInstanceUID LIMIT 1"
    ).fetchone()
    return str(row[0])


def queries(series_uid: str) -> list[Query]:
    """The queries timed: a cohort, a person name, a study-level one, one series' instances."""
    return [
        Query(
            "cohort",
            'find_series(Modality="CT", StudyDate="2020", NumberOfSeriesRelatedInstances="100-")',
            lambda s: s.find_series(Modality="CT", StudyDate="2020", NumberOfSeriesRelatedInstances="100-"),
            _SERIES_SQL + "se.Modality = ? AND st.StudyDate >= ? AND st.StudyDate <= ? "
            "AND se.NumberOfSeriesRelatedInstances >= ?" + _ORDER,
            ("CT", "20200101", "20201231", 100),
        ),
        Query(
            "person name",
            'find_series(PatientName="müller^a*")',
            lambda s: s.find_series(PatientName="müller^a*"),
            _SERIES_SQL + "lower(p.PatientName) GLOB ?" + _ORDER,
            ("müller^a*",),
        ),
        Query(
            "studies",
            'find_studies(ModalitiesInStudy="MR", StudyDate="202003")',
            lambda s: s.find_studies(ModalitiesInStudy="MR", StudyDate="202003"),
            "SELECT p.PatientID, p.PatientName, st.* FROM studies st JOIN patients p ON "
            "p.patient_key = st.patient_key WHERE st.StudyDate >= ? AND st.StudyDate <= ? AND EXISTS "
            "(SELECT 1 FROM series s2 WHERE s2.StudyInstanceUID = st.StudyInstanceUID AND s2.Modality = ?) "
            "ORDER BY p.PatientID, st.StudyDate",
            ("20200301", "20200331", "MR"),
        ),
        Query(
            "one series",
            "find_instances(SeriesInstanceUID=<a 100+ instance series>)",
            lambda s: s.find_instances(SeriesInstanceUID=series_uid),
            "SELECT * FROM instances WHERE SeriesInstanceUID = ? ORDER BY InstanceNumber",
            (series_uid,),
        ),
    ]


def _raw(con: sqlite3.Connection, q: Query) -> Callable[[], object]:
    return lambda: con.execute(q.sql, q.params).fetchall()


def measure(site: Site, con: sqlite3.Connection, qs: Sequence[Query], runs: int) -> dict[str, list[float]]:
    """Seconds per run of each query through jipkit and raw, interleaved."""
    methods: list[Method] = []
    for q in qs:
        methods.append(Method(f"jip {q.label}", partial(q.jip, site)))
        methods.append(Method(f"raw {q.label}", _raw(con, q)))
    return interleave(methods, runs, warmup=True)


def _repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()


def _rows_found(site: Site, con: sqlite3.Connection, q: Query) -> tuple[int, int]:
    return len(q.jip(site)), len(con.execute(q.sql, q.params).fetchall())


def _table(title: str, site: Site, con: sqlite3.Connection, qs: Sequence[Query], runs: int) -> Table:
    times = measure(site, con, qs, runs)
    table = Table(title)
    for q in qs:
        raw, jip = times[f"raw {q.label}"], times[f"jip {q.label}"]
        table.add(Row(f"raw SQLite: {q.label}", 1000 * median(raw), "ms"))
        table.add(
            Row(
                f"jipkit: {q.label}",
                1000 * median(jip),
                "ms",
                speedup(jip, raw),
                "raw",
                Target("<", 10, "figure"),
            )
        )
        found = _rows_found(site, con, q)
        p90 = 1000 * float(np.percentile(jip, 90))
        table.notes.append(
            f"{q.label}: {q.call} -> {found[0]} rows (raw {found[1]}); jipkit p90 {p90:.1f} ms"
        )
    return table


def run(ctx: Context) -> list[Table]:
    """Build the index, time each query through jipkit and by hand; again after ANALYZE."""
    n = ctx.sizes.query_instances
    folder = ctx.folder("query-index")
    ctx.say(f"synthesising an index of {n:,} instances")
    start = time.perf_counter()
    counts = build_index(folder / "index.sqlite", n)
    built = time.perf_counter() - start
    site = Site(SiteConfig(name="bench", index_path=folder / "index.sqlite", cache_dir=folder / "cache"))
    con = sqlite3.connect(folder / "index.sqlite")
    con.execute("PRAGMA cache_size = -65536")
    qs = queries(_one_series(con))
    runs = ctx.sizes.query_runs
    ctx.say(f"{runs} runs of {len(qs)} queries, jipkit and raw SQL interleaved")
    shape = ", ".join(f"{v:,} {k}" for k, v in counts.items() if k != "files")
    tables = [_table(f"query: cohort queries on an index of {shape} ({runs} runs)", site, con, qs, runs)]
    tables[0].notes.append(
        f"index synthesised in {built:.1f} s ({counts['instances'] / built:,.0f} instance rows/s); "
        "raw = the same selection in hand-written SQL, stored columns only, fetchall (no DataFrame)"
    )
    for q in qs:
        ctx.run_profile(f"query {q.label}", partial(_repeat, partial(q.jip, site), 20))
    ctx.say("ANALYZE (planner statistics; jipkit does not run it today), then the same queries again")
    con.execute("ANALYZE")
    site.index.close()
    runs = max(1, runs // 2)
    tables.append(_table(f"query: the same index after ANALYZE ({runs} runs)", site, con, qs, runs))
    tables[-1].notes.append(
        "what a jipkit index gets: `jip index` and `jip sync` run ANALYZE after a change (the rows above were written directly, without it)"
    )
    con.close()
    site.index.close()
    return tables
