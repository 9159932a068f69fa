"""Benchmark 3b: cohort queries on a 20,000-instance archive, jipkit's index versus Orthanc.

The same synthetic archive (tiny 8x8 images) is indexed by jipkit and uploaded to a
real Orthanc (``POST /instances``, 4 in parallel).  jipkit's ``Site.find_series`` is
timed against Orthanc's ``POST /tools/find`` at series level with the same criteria
and ``Expand: true``; Orthanc cannot match on a series' number of instances, so that
criterion is applied to its answer (its ``Instances`` lists), inside the timing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import requests

from jipkit.config import SiteConfig
from jipkit.data.site import Site

from ._cohort import SeriesSpec, plan_cohort, write_cohort
from ._common import Context, Method, Row, Table, Target, interleave, median, speedup
from ._orthanc import OrthancUnavailable, running_orthanc

__all__ = ["run"]

TITLE = "pacs-query: cohort queries, jipkit index vs Orthanc /tools/find"


@dataclass(frozen=True)
class _Query:
    label: str
    jip: dict[str, Any]
    orthanc: dict[str, str]
    min_instances: int = 0


def _queries(name: str) -> list[_Query]:
    """A cohort, a person name (``name``, as a lower-case pattern), and a large result."""
    return [
        _Query(
            "cohort",
            {"Modality": "CT", "StudyDate": "2020", "NumberOfSeriesRelatedInstances": "100-"},
            {"Modality": "CT", "StudyDate": "20200101-20201231"},
            min_instances=100,
        ),
        _Query("person name", {"PatientName": name}, {"PatientName": name}),
        _Query("all MR series", {"Modality": "MR"}, {"Modality": "MR"}),
    ]


def _name_pattern(specs: Sequence[SeriesSpec]) -> str:
    """``family^g*`` for the ASCII-named patient with the most series (a handful of rows)."""
    counts = Counter(s.patient_name for s in specs if s.patient_name.isascii())
    family, given = (counts.most_common(1)[0][0] if counts else specs[0].patient_name).split("^")
    return f"{family.lower()}^{given[:1].lower()}*"


def _orthanc_find(session: requests.Session, url: str, q: _Query) -> list[dict[str, Any]]:
    body = {"Level": "Series", "Query": q.orthanc, "Expand": True}
    r = session.post(f"{url}/tools/find", json=body, timeout=60)
    r.raise_for_status()
    found: list[dict[str, Any]] = r.json()
    return [s for s in found if len(s.get("Instances", ())) >= q.min_instances]


def _files(folder: Path) -> list[str]:
    return sorted(str(Path(d, n)) for d, _, names in os.walk(folder) for n in names)


def _methods(site: Site, session: requests.Session, url: str, queries: Sequence[_Query]) -> list[Method]:
    methods = []
    for q in queries:
        methods.append(Method(f"jip {q.label}", partial(site.find_series, **q.jip)))
        methods.append(Method(f"orthanc {q.label}", partial(_orthanc_find, session, url, q)))
    return methods


def _table(
    n: int,
    runs: int,
    times: dict[str, list[float]],
    queries: Sequence[_Query],
    answer: Callable[[_Query], tuple[int, int]],
) -> Table:
    table = Table(f"pacs-query: {n:,} instances, jipkit index vs Orthanc /tools/find ({runs} runs)")
    for q in queries:
        jip, orthanc = times[f"jip {q.label}"], times[f"orthanc {q.label}"]
        table.add(Row(f"Orthanc /tools/find: {q.label}", 1000 * median(orthanc), "ms"))
        table.add(
            Row(
                f"jipkit find_series: {q.label}",
                1000 * median(jip),
                "ms",
                speedup(jip, orthanc),
                "Orthanc",
                Target(">=", 5),
            )
        )
        got = answer(q)
        flag = "" if got[0] == got[1] else "  <- the two disagree"
        table.notes.append(f"{q.label}: {q.jip} -> jipkit {got[0]} series, Orthanc {got[1]}{flag}")
    return table


def run(ctx: Context) -> list[Table]:
    """Write the archive, index it and upload it, then time the queries on both."""
    n = ctx.sizes.pacs_instances
    folder = ctx.folder("pacs-archive")
    ctx.say(f"writing a {n:,}-instance archive (8x8 images)")
    specs = plan_cohort(n, seed=11)
    write_cohort(folder / "files", specs, image=8, seed=11)
    queries = _queries(_name_pattern(specs))
    files = _files(folder / "files")
    site = Site(
        SiteConfig(name="bench", index_path=folder / "index.sqlite", cache_dir=folder / "cache", workers=2)
    )
    start = time.perf_counter()
    site.index_paths([folder / "files"], progress=False)
    indexed = time.perf_counter() - start
    try:
        with running_orthanc(folder / "orthanc") as server, requests.Session() as session:
            ctx.say(f"uploading {len(files):,} files to Orthanc, 4 at a time")
            start = time.perf_counter()
            server.upload(files, workers=4)
            uploaded = time.perf_counter() - start
            session.auth = server.auth
            runs = ctx.sizes.pacs_runs
            ctx.say(f"{runs} runs of {len(queries)} queries on both, interleaved")
            times = interleave(_methods(site, session, server.url, queries), runs, warmup=True)

            def answer(q: _Query) -> tuple[int, int]:
                return len(site.find_series(**q.jip)), len(_orthanc_find(session, server.url, q))

            table = _table(len(files), runs, times, queries, answer)
            ctx.run_profile(
                "find_series cohort", lambda: [site.find_series(**queries[0].jip) for _ in range(50)]
            )
    except OrthancUnavailable as err:
        return [Table(TITLE, skipped=str(err))]
    finally:
        site.index.close()
    table.notes.append(
        f"jipkit index_paths (2 workers): {len(files) / indexed:,.0f} files/s; Orthanc POST /instances "
        f"(4 at a time): {len(files) / uploaded:,.0f} files/s"
    )
    return [table]
