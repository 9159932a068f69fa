"""Benchmark: disclosure checks of a large result against 1,000,000 identifying values.

A site index is synthesised straight into jipkit's SQLite tables with about 1,000,000
distinct identifying values (100,000 patients: names from common German and
international pools and from syllables, with accents and some in Greek, Hebrew, Cyrillic,
Japanese and Chinese; 8-digit IDs, some other IDs; birth dates; 2 studies each with UID
and 10-digit accession number; 3 series each with UID; referring physicians and
institutions).  The matcher is built from it (:meth:`IdentifierMatcher.from_index`), saved
and loaded again (the runner's cache).

The result checked is tens of MB of the outputs an analysis notebook prints: pandas
tables (HTML and text, with floats, dates as years, accented descriptions), stdout logs,
dictionaries of measures, and typed records; a few identifiers are planted in it (names
reordered and upper-cased, an ID, a base64-encoded name, a birth date) and must be found.
:func:`check_result` runs on all of it with budgets and size limits raised so that every
item is checked and kept (the defaults would drop items past 20 MB without looking).

The baseline is what a plain Python check would do: for each identifier, ``value in
text`` on the case-folded text (exact substrings only: no written forms, no encodings).
It is measured with 10,000 identifiers on a few MB of the same outputs and extrapolated
to 1,000,000 identifiers and the whole result (labelled as such): the loop's time grows
with both.
"""

from __future__ import annotations

import base64
import json
import resource
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jipkit.data.index import Index
from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import IdentifierMatcher, OutputPolicy, check_result, index_values

from ._cohort import FAMILY, GIVEN
from ._common import Context, Row, Table, Target, median

__all__ = ["build_identifier_index", "make_result", "run"]

_UID = "1.2.826.0.1.3680043.10.543"
_SYLLABLES = (
    "ber", "stein", "wal", "lin", "ro", "sen", "fried", "ho", "kirch", "brun", "eich", "feld",
    "son", "ner", "ober", "un", "neu", "alt", "grö", "mühl", "hüt", "ten", "rö", "der", "ka",
    "mi", "to", "la", "ve", "ri", "do", "sa", "ne", "kow", "ski", "vić", "ić", "ová", "lund",
    "gård", "ås", "øy", "ha", "ma", "ru", "ki", "zu", "ya", "mo", "ta", "be", "ga", "lé", "çi",
)  # fmt: skip
_SCRIPTS = (
    ("Παπαδόπουλος", "Γιώργος"), ("Ιωάννου", "Ελένη"), ("Коваленко", "Олена"), ("Смирнов", "Иван"),
    ("כהן", "שרה"), ("לוי", "דוד"), ("山田", "太郎"), ("佐藤", "花子"), ("王", "小东"), ("李", "娜"),
)  # fmt: skip
_INSTITUTIONS = [f"Klinikum {c}stadt" for c in ("Nord", "Süd", "Ost", "West", "Mitte")] + [
    "St. Synthetic Hospital",
    "Universitätsklinikum Synthstadt",
]
_GOAL = 50.0  # MB/s


def _syllable_name(rng: np.random.Generator, parts: int) -> str:
    return "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), parts)).capitalize()


def _name(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.03:
        family, given = _SCRIPTS[int(rng.integers(len(_SCRIPTS)))]
        return f"{family}^{given}"
    family = (
        FAMILY[int(rng.integers(len(FAMILY)))] if kind < 0.3 else _syllable_name(rng, int(rng.integers(2, 4)))
    )
    given = GIVEN[int(rng.integers(len(GIVEN)))] if rng.random() < 0.6 else _syllable_name(rng, 2)
    if rng.random() < 0.15:
        given += "^" + GIVEN[int(rng.integers(len(GIVEN)))]
    return f"{family}^{given}"


def build_identifier_index(path: Path, n_values: int, seed: int = 0) -> dict[str, int]:
    """An index holding about ``n_values`` distinct identifying values (10 per patient)."""
    rng = np.random.default_rng([seed, 77])
    patients, studies, series = [], [], []
    n_patients = max(1, n_values // 10)
    physicians = [_name(rng) for _ in range(max(10, n_patients // 200))]
    ids = rng.choice(10**8, size=n_patients, replace=False)
    for p in range(n_patients):
        birth = f"{int(rng.integers(1925, 2024))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        other = f"KV{int(rng.integers(10**9)):09d}" if rng.random() < 0.1 else None
        patients.append((p + 1, f"{int(ids[p]):08d}", "SITE-MRN", _name(rng), birth, "F", other))
        for s in range(2):
            st_uid = f"{_UID}.1.{p}.{s}"
            accession = f"{int(rng.integers(10**9, 10**10))}"
            doctor = physicians[int(rng.integers(len(physicians)))]
            studies.append((st_uid, "20200101", accession, doctor, p + 1))
            for k in range(3 if s == 0 else 2):
                hospital = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
                series.append((f"{_UID}.2.{p}.{s}.{k}", "CT", hospital, st_uid, 1))
    index = Index(path)
    with index.transaction() as con:
        con.executemany(
            "INSERT INTO patients (patient_key, PatientID, IssuerOfPatientID, PatientName, "
            "PatientBirthDate, PatientSex, OtherPatientIDs) VALUES (?, ?, ?, ?, ?, ?, ?)",
            patients,
        )
        con.executemany(
            "INSERT INTO studies (StudyInstanceUID, StudyDate, AccessionNumber, ReferringPhysicianName, "
            "patient_key) VALUES (?, ?, ?, ?, ?)",
            studies,
        )
        con.executemany(
            "INSERT INTO series (SeriesInstanceUID, Modality, InstitutionName, StudyInstanceUID, "
            "NumberOfSeriesRelatedInstances) VALUES (?, ?, ?, ?, ?)",
            series,
        )
    index.close()
    counts: dict[str, int] = {}
    for attribute, _ in index_values(path):
        counts[attribute] = counts.get(attribute, 0) + 1
    return counts


def _table(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Modality": rng.choice(["CT", "MR", "PT", "CR"], rows),
            "BodyPartExamined": rng.choice(["CHEST", "HEAD", "ABDOMEN", "KNEE", "PELVIS"], rows),
            "SeriesDescription": rng.choice(
                ["Thorax 1.5 Br40", "t1_mprage_tra", "Schädel nativ", "Röntgen Knie"], rows
            ),
            "Manufacturer": rng.choice(["SIEMENS", "GE MEDICAL SYSTEMS", "Philips"], rows),
            "year": rng.integers(2010, 2025, rows).astype(str),
            "series": rng.integers(5, 900, rows),
            "slices_mean": rng.normal(180, 60, rows),
            "lung_ml_mean": rng.normal(4700, 800, rows),
            "hu_sd": rng.gamma(4, 30, rows),
        }
    )


def _log(rng: np.random.Generator, lines: int) -> str:
    out = []
    for i in range(lines):
        if i % 3 == 0:
            out.append(
                f"epoch {i // 3 + 1}/200 loss={rng.random():.4f} dice={rng.random():.4f} lr=1.0e-04 {rng.random() * 30:.1f}s"
            )
        elif i % 3 == 1:
            out.append(
                f"processed {int(rng.integers(1, 400))} of 400 series ({rng.random() * 100:.1f}%), Größe 512x512"
            )
        else:
            out.append(
                str({"lung_left_ml": round(float(rng.normal(2300, 400)), 2), "dice": float(rng.random())})
            )
    return "\n".join(out) + "\n"


def make_result(
    target_bytes: int, seed: int, planted: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, int]:
    """Outputs and records of about ``target_bytes``, the notebook source, and the exact size.

    ``planted`` texts go into stdout lines spread over the result.
    """
    rng = np.random.default_rng([seed, 88])
    outputs: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    size, cell = 0, 0
    planted = list(planted)
    while size < target_bytes:
        cell += 1
        frame = _table(rng, int(rng.integers(500, 2500)))
        html, plain = frame.to_html(), frame.to_string()
        log = _log(rng, 600)
        for leak in planted:  # all in the first cell
            log += f"checking {leak}\n"
        planted = []
        rec = {
            "schema": "jip.record/1",
            "name": f"series_{cell}",
            "kind": "count",
            "value": int(rng.integers(5, 500)),
            "of": "series",
        }
        records.append(rec)
        outputs.append(
            {
                "cell": cell,
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": log},
                    {
                        "output_type": "display_data",
                        "data": {RECORD_MIME: rec, "text/plain": "[jip record]"},
                        "metadata": {},
                    },
                    {
                        "output_type": "execute_result",
                        "execution_count": cell,
                        "data": {"text/html": html, "text/plain": plain},
                        "metadata": {},
                    },
                ],
            }
        )
        size += sum(len(x.encode()) for x in (html, plain, log))
    source = "for cell in range(100):\n    jip.record(f'series_{cell}', n, kind='count', of='series')\n"
    source += "cells = " + json.dumps(list(range(1, cell + 1))) + "\n"
    return outputs, records, source, size


def _texts(outputs: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for cell in outputs:
        for o in cell["outputs"]:
            if o["output_type"] == "stream":
                out.append(o["text"])
            else:
                out.extend(v for k, v in o["data"].items() if isinstance(v, str) and k != RECORD_MIME)
    return out


def _substring_seconds(values: Sequence[str], texts: Sequence[str]) -> float:
    """One plain Python pass: ``value in text`` for every value and text (case-folded)."""
    folded = [t.casefold() for t in texts]
    needles = [v.casefold() for v in values]
    start = time.perf_counter()
    found = 0
    for needle in needles:
        for text in folded:
            if needle in text:
                found += 1
    return time.perf_counter() - start


def _planted(path: Path) -> list[str]:
    """A few identifiers of the index written as leaks are (names reordered, encoded, ...)."""
    con = sqlite3.connect(path)
    name, pid, birth = con.execute(
        "SELECT PatientName, PatientID, PatientBirthDate FROM patients WHERE patient_key = 4242 % "
        "(SELECT COUNT(*) FROM patients) + 1"
    ).fetchone()
    con.close()
    family, given = name.split("^")[:2]
    b = f"{birth[6:8]}.{birth[4:6]}.{birth[:4]}"
    return [
        f"{given} {family.upper()}",
        f"MRN {pid}",
        base64.b64encode(f"{family}, {given}".encode()).decode(),
        f"born {b}",
    ]


def run(ctx: Context) -> list[Table]:
    """Build the matcher from a 1,000,000-value index, then check tens of MB of outputs."""
    quick = ctx.sizes.query_instances < 1_000_000
    n_values = int(getattr(ctx.sizes, "disclosure_identifiers", 20_000 if quick else 1_000_000))
    target = int(getattr(ctx.sizes, "disclosure_bytes", 2_000_000 if quick else 40_000_000))
    rounds = int(getattr(ctx.sizes, "disclosure_rounds", 1 if quick else 3))
    folder = ctx.folder("disclosure")
    ctx.say(f"synthesising an index of about {n_values:,} identifying values")
    index_path = folder / "index.sqlite"
    counts = build_identifier_index(index_path, n_values)
    total_values = sum(counts.values())

    ctx.say("building the matcher from the index")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    matcher = IdentifierMatcher.from_index(index_path)
    built = time.perf_counter() - start
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    matcher.save(folder / "matcher.pickle")
    saved = time.perf_counter() - start
    start = time.perf_counter()
    matcher = IdentifierMatcher.load(folder / "matcher.pickle")
    loaded = time.perf_counter() - start

    planted = _planted(index_path)
    ctx.say(f"making about {target / 1e6:.0f} MB of outputs")
    outputs, records, source, size = make_result(target, seed=1, planted=planted)
    policy = OutputPolicy(
        max_result_bytes=10 * size,
        max_numeric_values=10**9,
        max_records=10**6,
        max_output_bytes=10 * size,
    )

    def check() -> Any:
        return check_result(outputs, records, policy=policy, matcher=matcher, notebook_source=source)

    ctx.say(f"{rounds} round(s) of check_result on {size / 1e6:.1f} MB")
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = check()
        times.append(time.perf_counter() - start)
    assert result is not None
    found = sum(r.count for r in result.redactions if r.rule == "identifier")
    other = sorted({r.rule for r in result.redactions} - {"identifier"})
    ctx.run_profile("check_result", check)

    ctx.say("baseline: a plain substring loop over 10,000 identifiers (1,000 when quick) on a slice")
    texts = _texts(outputs)
    sample, sample_bytes = [], 0
    for t in texts:
        if sample_bytes >= min(size, 500_000 if quick else 4_000_000):
            break
        sample.append(t)
        sample_bytes += len(t.encode())
    values = [v for _, v in index_values(index_path)][: 1_000 if quick else 10_000]
    loop = _substring_seconds(values, sample)
    loop_full = loop * (total_values / len(values)) * (size / sample_bytes)

    rate = size / 1e6 / median(times)
    loop_rate = size / 1e6 / loop_full
    table = Table(
        f"disclosure: checking {size / 1e6:.1f} MB of outputs against {total_values:,} identifying values"
    )
    table.add(Row(f"build the matcher from the index ({total_values:,} values)", built, "s"))
    table.add(Row("load the matcher from the runner's cache", loaded, "s"))
    table.add(
        Row(
            f"substring loop, extrapolated from {len(values):,} identifiers",
            loop_rate,
            "MB/s",
        )
    )
    table.add(
        Row(
            "check_result: identifiers, encodings, blobs, counts",
            rate,
            "MB/s",
            rate / loop_rate,
            "substring loop",
            Target(">=", _GOAL, "figure"),
        )
    )
    sizes = matcher.sizes
    table.notes += [
        f"index: {', '.join(f'{v:,} {k}' for k, v in counts.items())}",
        f"matcher: {sizes['words']:,} word forms (automaton), {sizes['digits']:,} digit keys, "
        f"{sizes['punct']:,} punctuated keys, {sizes['alnum']:,} alphanumeric IDs, {sizes['dates']:,} "
        f"dates; peak RSS grew {(rss1 - rss0) / 1024:,.0f} MB while building; saved in {saved:.1f} s",
        f"check_result rounds (s): {', '.join(f'{t:.2f}' for t in times)} (the first with the matcher's "
        f"cache of decoded runs empty: {size / 1e6 / times[0]:.1f} MB/s); planted leaks {len(planted)}, "
        f"identifier redactions {found}; other rules: {', '.join(other) or 'none'}",
        f"substring loop: {loop:.1f} s for {len(values):,} identifiers x {sample_bytes / 1e6:.1f} MB, "
        f"x {total_values / len(values):.0f} x {size / sample_bytes:.1f} = {loop_full:,.0f} s "
        "(extrapolated; exact substrings only: no written forms, no encodings)",
    ]
    return [table]
