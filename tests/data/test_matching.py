"""DICOM matching (PS3.4 C.2.2.2) as the index applies it, on a real SQLite table."""

from __future__ import annotations

import sqlite3

import pytest

from jipkit.data.matching import condition, pn_match
from jipkit.errors import QueryError

ROWS = [
    # StudyDate, StudyTime, Modality, SeriesDescription, PatientName, AccessionNumber, SeriesInstanceUID, SeriesNumber
    ("20191231", "235959", "CT", "Thorax 1.0 B31f", "Müller^Jürgen", "A1", "1.2.3.1", 1),
    ("20200101", "000000", "CT", "thorax 5mm", "DOE^JOHN^Q", "A2", "1.2.3.2", 2),
    ("20200615", "143015.25", "MR", "T1 axial", "Doe^Jane", "", "1.2.3.3", 3),
    ("20201231", "080000", "CT", "Abdomen", "Yamada^Tarou=山田^太郎=やまだ^たろう", None, "1.2.3.4", 10),
    ("20210101", "1200", "PT", "[PET] WB", "Li^Yu", "A5", "1.2.3.5", 11),
]
COLS = [
    "StudyDate",
    "StudyTime",
    "Modality",
    "SeriesDescription",
    "PatientName",
    "AccessionNumber",
    "SeriesInstanceUID",
    "SeriesNumber",
]


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    con = sqlite3.connect(":memory:")
    con.create_function("jip_pn_match", 2, lambda v, p: int(pn_match(v, p)))
    con.execute(f"CREATE TABLE t ({', '.join(COLS)})")
    con.executemany(f"INSERT INTO t VALUES ({','.join('?' * len(COLS))})", ROWS)
    return con


def match(db: sqlite3.Connection, keyword: str, value: object, **kw: bool) -> list[str]:
    cond = condition(keyword, value, keyword, **kw)
    sql, params = cond if cond else ("1", [])
    return [r[0] for r in db.execute(f"SELECT SeriesInstanceUID FROM t WHERE {sql} ORDER BY 1", params)]


ALL = [r[6] for r in ROWS]


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        # universal matching
        ("Modality", None, ALL),
        ("Modality", "", ALL),
        ("Modality", "*", ALL),
        # single value: exact and case-sensitive
        ("Modality", "CT", ["1.2.3.1", "1.2.3.2", "1.2.3.4"]),
        ("Modality", "ct", []),
        # wildcards
        ("SeriesDescription", "*horax*", ["1.2.3.1", "1.2.3.2"]),
        ("SeriesDescription", "Thorax*", ["1.2.3.1"]),
        ("SeriesDescription", "T? axial", ["1.2.3.3"]),
        ("SeriesDescription", "[PET]*", ["1.2.3.5"]),  # brackets are literal, not a class
        # date ranges: inclusive, open-ended, year and month shortcuts
        ("StudyDate", "20200101-20201231", ["1.2.3.2", "1.2.3.3", "1.2.3.4"]),
        ("StudyDate", "20200101-", ["1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"]),
        ("StudyDate", "-20200101", ["1.2.3.1", "1.2.3.2"]),
        ("StudyDate", "2020", ["1.2.3.2", "1.2.3.3", "1.2.3.4"]),
        ("StudyDate", "2020-", ["1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"]),
        ("StudyDate", "202006", ["1.2.3.3"]),
        ("StudyDate", "20200615", ["1.2.3.3"]),
        # time ranges: the upper bound covers its whole last unit
        ("StudyTime", "1430-1430", ["1.2.3.3"]),
        ("StudyTime", "-0800", ["1.2.3.2", "1.2.3.4"]),
        ("StudyTime", "1200-", ["1.2.3.1", "1.2.3.3", "1.2.3.5"]),
        # lists of UIDs
        ("SeriesInstanceUID", ["1.2.3.1", "1.2.3.5"], ["1.2.3.1", "1.2.3.5"]),
        ("SeriesInstanceUID", "1.2.3.2\\1.2.3.4", ["1.2.3.2", "1.2.3.4"]),
        # empty value matching
        ("AccessionNumber", '""', ["1.2.3.3", "1.2.3.4"]),
        # person names: case-insensitive per component, groups
        ("PatientName", "doe^j*", ["1.2.3.2", "1.2.3.3"]),
        ("PatientName", "DOE", ["1.2.3.2", "1.2.3.3"]),
        ("PatientName", "*^JOHN", ["1.2.3.2"]),
        ("PatientName", "müller^jürgen", ["1.2.3.1"]),
        ("PatientName", "山田^太郎", ["1.2.3.4"]),
        ("PatientName", "yamada^tarou=山田^*", ["1.2.3.4"]),
        ("PatientName", "yamada^tarou=佐藤^*", []),
        ("PatientName", "Li", ["1.2.3.5"]),
        ("PatientName", "L", []),
        # numbers and numeric ranges
        ("SeriesNumber", "10", ["1.2.3.4"]),
        ("SeriesNumber", "3-10", ["1.2.3.3", "1.2.3.4"]),
        ("SeriesNumber", (None, 2), ["1.2.3.1", "1.2.3.2"]),
    ],
)
def test_matching(db: sqlite3.Connection, keyword: str, value: object, expected: list[str]) -> None:
    assert match(db, keyword, value) == expected


def test_ignore_case_extends_to_text(db: sqlite3.Connection) -> None:
    assert match(db, "Modality", "ct", ignore_case=True) == ["1.2.3.1", "1.2.3.2", "1.2.3.4"]
    assert match(db, "SeriesDescription", "*THORAX*", ignore_case=True) == ["1.2.3.1", "1.2.3.2"]


@pytest.mark.parametrize(
    ("keyword", "value", "fragment"),
    [
        ("StudyDate", "2020-13", "YYYYMMDD"),
        ("StudyDate", "20200230", "not a calendar date"),
        ("StudyDate", "-", "neither a start nor an end"),
        ("StudyTime", "25h", "HHMMSS"),
        ("SeriesNumber", "ten", "expected a number"),
        ("Modality", [], "empty list"),
        ("Modality", 5, "expected a string"),
    ],
)
def test_bad_values_say_what_is_expected(keyword: str, value: object, fragment: str) -> None:
    with pytest.raises(QueryError, match=fragment):
        condition(keyword, value, keyword)
