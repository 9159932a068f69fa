"""Fixtures for the disclosure checks.

- ``archive`` (session): a synthetic hospital archive (:func:`jipkit.data.synth.generate_archive`,
  60 patients: names with accents, very short names, Japanese, Korean, Chinese, Greek and
  Hebrew; 8-digit MRNs; UIDs; birth dates; accession numbers; institutions) indexed with
  ``jip.connect(...).index_paths``; its ``site.toml`` and every identifying value.
- ``matcher`` (session): the :class:`IdentifierMatcher` built from that index.
- ``people``: the archive's patients (name, ID, birth date), one per distinct name.

Helpers build outputs as the runner collects them (``[{"cell": i, "outputs": [...]}]``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jipkit as jip
from jipkit.data.synth import generate_archive
from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import CheckedResult, IdentifierMatcher, OutputPolicy, check_result, index_values


@dataclass(frozen=True)
class Archive:
    """A synthetic archive and its index."""

    root: Path
    config: Path
    index: Path
    values: list[tuple[str, str]]


@dataclass(frozen=True)
class Person:
    name: str
    patient_id: str
    birth_date: str


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    generate_archive(root / "dicom", n_patients=60, seed=3, ct_shape=(6, 16, 16), mr_shape=(4, 16, 16))
    config = root / "site.toml"
    config.write_text(
        f'name = "disclosure-test"\nindex_path = "{root}/index.sqlite"\ncache_dir = "{root}/cache"\nworkers = 1\n',
        encoding="utf-8",
    )
    site = jip.connect(config)
    site.index_paths([root / "dicom"], progress=False)
    site.index.close()
    index = root / "index.sqlite"
    return Archive(root, config, index, list(index_values(index)))


@pytest.fixture(scope="session")
def matcher(archive: Archive) -> IdentifierMatcher:
    return IdentifierMatcher.from_index(archive.index)


@pytest.fixture(scope="session")
def people(archive: Archive) -> list[Person]:
    con = sqlite3.connect(archive.index)
    rows = con.execute(
        "SELECT PatientName, MIN(PatientID), MIN(PatientBirthDate) FROM patients GROUP BY PatientName"
    ).fetchall()
    con.close()
    return [Person(*row) for row in rows]


def person(people: list[Person], name: str) -> Person:
    """The archive's patient called ``name`` (DICOM form)."""
    return next(p for p in people if p.name == name)


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def display(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"output_type": "display_data", "data": data, "metadata": metadata or {}}


def record_output(rec: dict[str, Any]) -> dict[str, Any]:
    return display({RECORD_MIME: rec, "text/plain": f"[jip record] {rec['name']}"})


def count(name: str, value: int, of: str = "patients") -> dict[str, Any]:
    return {"schema": "jip.record/1", "name": name, "kind": "count", "value": value, "of": of}


def cells(*items: dict[str, Any]) -> list[dict[str, Any]]:
    """One output per cell, cells numbered from 1."""
    return [{"cell": i + 1, "outputs": [item]} for i, item in enumerate(items)]


def check(
    outputs: list[dict[str, Any]],
    records: list[dict[str, Any]] | None = None,
    *,
    matcher: IdentifierMatcher,
    source: str | None = None,
    policy: OutputPolicy | None = None,
    **kw: Any,
) -> CheckedResult:
    """:func:`check_result` with the default policy and (unless given) a source naming every record."""
    records = records or []
    if source is None:
        source = "\n".join(
            f"jip.record({r['name']!r}, ...)" for r in records if isinstance(r.get("name"), str)
        )
    return check_result(
        outputs, records, policy=policy or OutputPolicy(), matcher=matcher, notebook_source=source, **kw
    )


def rules(result: CheckedResult) -> set[str]:
    return {r.rule for r in result.redactions}
