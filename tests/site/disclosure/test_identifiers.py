"""The identifier matcher: written forms, encodings, token boundaries, false alarms, caching.

Values come from a real index of a synthetic archive (``archive``) where the test is
about realistic identifiers, and from a small hand-made matcher where it is about a rule.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import urllib.parse
from pathlib import Path

import pytest

from jipkit.site.disclosure import IdentifierMatcher, cached_matcher
from jipkit.site.disclosure.normalize import compact, weight
from tests.site.disclosure.conftest import Archive, Person

SMALL = IdentifierMatcher.build(
    [
        ("PatientName", "Müller^Jürgen"),
        ("PatientName", "Li^Yu"),
        ("PatientName", "Ng^A"),
        ("PatientName", "Smith^John^Michael^Dr"),
        ("PatientName", "Dupont-Lefèvre^Marie-Hélène"),
        ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("PatientName", "Διονυσιος"),
        ("PatientName", "כהן^שרה"),
        ("PatientID", "01234567"),
        ("OtherPatientIDs", "KV123456789\\SYN-000777"),
        ("PatientBirthDate", "19800102"),
        ("AccessionNumber", "7719185829"),
        ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1009751027878939405"),
        ("InstitutionName", "Universitätsklinikum Synthstadt"),
        ("ReferringPhysicianName", "Synthetic^Referrer"),
    ]
)


def found(text: str, matcher: IdentifierMatcher = SMALL) -> set[str]:
    return {h.attribute for h in matcher.scan(text)}


@pytest.mark.parametrize(
    "text",
    [
        "Müller^Jürgen",
        "Jürgen Müller",
        "MÜLLER, JÜRGEN",
        "mueller juergen",
        "Juergen Müller",
        "j.u.r.g.e.n m.u.l.l.e.r",
        "patient=jurgen_muller;",
        "xJürgenMüllerx",  # long forms match anywhere
        "J. Müller",
        "Müller J",
        "Mu\u0308ller, Ju\u0308rgen",  # decomposed accents
        "ＭＵＬＬＥＲ　ＪＵＲＧＥＮ",  # full-width
        "Li Yu",
        "YU, Li",
        "Dr. John Michael Smith",
        "Smith, John M",
        "Marie-Hélène Dupont-Lefèvre",
        "Marie Dupont-Lefevre",
        "Tarou Yamada",
        "患者: 山田太郎 様",
        "太郎 山田",
        "ΔΙΟΝΥΣΙΟΣ",
        "Διονύσιος",
        "שרה כהן",
        "Referrer, Synthetic",
    ],
)
def test_names_are_found_in_their_written_forms(text: str) -> None:
    assert "PatientName" in found(text) or "ReferringPhysicianName" in found(text), text


@pytest.mark.parametrize(
    "text",
    [
        "Julia Yu",  # "Li Yu" inside other words: token boundaries
        "Müller",  # a family name alone
        "Jürgen",
        "Ng A",  # shorter than the minimum length (3 < 4)
        "the Angel",
        "Smithson Johnny",
        "Yulia",  # "YuLi" (no separator) would be the name
    ],
)
def test_names_are_not_found_in_other_words(text: str) -> None:
    assert "PatientName" not in found(text), text


def test_a_shorter_minimum_finds_short_names_on_token_boundaries() -> None:
    matcher = IdentifierMatcher.build([("PatientName", "Ng^A")], min_length=3)
    assert found("patient A. Ng", matcher) == {"PatientName"}
    assert found("NG, A", matcher) == {"PatientName"}
    assert found("Angela", matcher) == set() and found("wrong answer", matcher) == set()


@pytest.mark.parametrize(
    ("text", "attribute"),
    [
        ("MRN 01234567", "PatientID"),
        ("MRN:01234567.", "PatientID"),
        ("id=1234567", "PatientID"),  # int() dropped the leading zero
        ("1234567.0", "PatientID"),  # an ID column read as floats
        ("x01234567y", "PatientID"),  # letters around are token boundaries
        ("KV123456789", "OtherPatientIDs"),
        ("kv-123456789", "OtherPatientIDs"),
        ("ID: SYN 000777", "OtherPatientIDs"),
        ("acc 7719185829", "AccessionNumber"),
        ("1.2.826.0.1.3680043.8.498.1009751027878939405", "StudyInstanceUID"),
        ("uid=1.2.826.0.1.3680043.8.498.1009751027878939405.", "StudyInstanceUID"),
        ("12826013680043849810097510278789394 05", None),  # not the UID: broken digit run
        ("1282601368004384981009751027878939405", "StudyInstanceUID"),  # dots removed
        ("UNIVERSITAETSKLINIKUM SYNTHSTADT", "InstitutionName"),
    ],
)
def test_ids_uids_and_institutions(text: str, attribute: str | None) -> None:
    assert found(text) == ({attribute} if attribute else set()), text


@pytest.mark.parametrize(
    "text",
    [
        "count 12345678",  # another 8-digit number
        "n = 123456789",  # a longer digit run holds the ID's digits
        "0.01234567",  # the decimals of a number
        "301234567",
        "1234 567",  # separators between the digits of a short numeric ID are not ignored
        "accession 77191858291",
    ],
)
def test_numbers_that_are_not_the_ids(text: str) -> None:
    assert found(text) == set(), text


@pytest.mark.parametrize(
    "text",
    [
        "19800102",
        "born 1980-01-02",
        "1980-01-02T00:00:00",
        "Timestamp('1980-01-02 00:00:00')",
        "02.01.1980",
        "2.1.1980",
        "01/02/1980",
        "1/2/1980",
        "02011980",
        "2 Jan 1980",
        "2. Januar 1980",
        "January 2nd, 1980",
        "02-JAN-1980",
        "1980 Jan 02",
        "-1980/01/02-",
    ],
)
def test_birth_dates_in_common_written_forms(text: str) -> None:
    assert found(text) == {"PatientBirthDate"}, text


@pytest.mark.parametrize("text", ["12 Jan 1980", "2 Jan 1981", "1980", "19800103", "Jan 1980", "120.01.1980"])
def test_other_dates_are_not_the_birth_date(text: str) -> None:
    assert found(text) == set(), text


def test_hits_give_the_span_to_remove() -> None:
    text = "first: MUELLER, Juergen (MRN 01234567)\n"
    spans = sorted((h.attribute, text[h.start : h.end]) for h in SMALL.scan(text))
    assert spans == [("PatientID", "01234567"), ("PatientName", "MUELLER, Juergen")]


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: s.encode().hex(),
        lambda s: s.encode().hex().upper(),
        lambda s: base64.b64encode(s.encode()).decode(),
        lambda s: base64.b64encode(b"x" + s.encode()).decode(),
        lambda s: base64.b64encode(b"xy" + s.encode()).decode(),
        lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
        lambda s: "Zm9v" + base64.b64encode(b"!" + s.encode()).decode(),
        lambda s: urllib.parse.quote(s),
        lambda s: urllib.parse.quote_plus(s),
        lambda s: "".join(f"\\x{b:02x}" for b in s.encode()),
        lambda s: repr(s.encode()),
        lambda s: s.encode("unicode_escape").decode(),
        lambda s: "".join(f"&#{ord(c)};" for c in s),
        lambda s: base64.b64encode(s.encode().hex().encode()).decode(),  # nested
    ],
)
@pytest.mark.parametrize("value", ["Jürgen MÜLLER", "01234567", "2 Jan 1980", "山田太郎"])
def test_encoded_values_are_found(encode: object, value: str) -> None:
    text = f"payload: {encode(value)} end"  # type: ignore[operator]
    assert found(text), text


def test_encoded_hits_cover_the_encoded_run() -> None:
    run = base64.b64encode("Jürgen Müller".encode()).decode()
    text = f"a {run} b"
    (hit,) = SMALL.scan(text)
    assert (hit.encoding, text[hit.start : hit.end]) == ("base64", run.rstrip("="))


def test_junk_decoded_from_numbers_is_not_read_as_names(matcher: IdentifierMatcher) -> None:
    floats = " ".join(str(x / 7) for x in range(1, 4000))  # long digit runs, read as hex too
    assert matcher.scan(floats) == []


def test_every_patient_of_the_archive_is_found(matcher: IdentifierMatcher, people: list[Person]) -> None:
    missed = []
    for p in people:
        first = p.name.split("=")[0]
        family, _, given = first.partition("^")
        given = given.split("^")[0]
        shown = f"{given} {family}".strip().upper()
        if weight(compact(shown)) >= 4 and not matcher.scan(f"patient {shown}!"):
            missed.append(shown)
        if not matcher.scan(
            f"ID {p.patient_id} born {p.birth_date[6:]}.{p.birth_date[4:6]}.{p.birth_date[:4]}"
        ):
            missed.append(p.patient_id)
    assert missed == []


def test_every_uid_and_accession_number_of_the_archive_is_found(
    matcher: IdentifierMatcher, archive: Archive
) -> None:
    wanted = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber", "InstitutionName")
    values = [(a, v) for a, v in archive.values if a in wanted]
    assert {a for a, _ in values} == set(wanted)
    texts = [f"{v}" for _, v in values]
    hits = matcher.scan_many(texts)
    assert [v for (_, v), h in zip(values, hits, strict=True) if not h] == []


def test_scan_many_keeps_texts_apart() -> None:
    hits = SMALL.scan_many(["Müller", "Jürgen", "Jürgen Müller", "01234567"])
    assert [[h.attribute for h in hs] for hs in hits] == [[], [], ["PatientName"], ["PatientID"]]
    assert (hits[3][0].start, hits[3][0].end) == (0, 8)


def test_the_matcher_is_saved_and_loaded(tmp_path: Path) -> None:
    SMALL.save(tmp_path / "m.pickle")
    assert os.stat(tmp_path / "m.pickle").st_mode & 0o777 == 0o600
    loaded = IdentifierMatcher.load(tmp_path / "m.pickle")
    assert loaded.sizes == SMALL.sizes
    assert found("Jürgen Müller", loaded) == {"PatientName"}
    (tmp_path / "bad.pickle").write_bytes(b"\x80\x05N.")
    with pytest.raises(ValueError, match="not a matcher"):
        IdentifierMatcher.load(tmp_path / "bad.pickle")


def test_cached_matcher_is_built_once_per_index_state(tmp_path: Path, archive: Archive) -> None:
    index = tmp_path / "index.sqlite"
    index.write_bytes(archive.index.read_bytes())
    first = cached_matcher(index, cache_dir=tmp_path / "cache")
    assert cached_matcher(index, cache_dir=tmp_path / "cache") is first
    assert len(list((tmp_path / "cache").glob("identifiers-*.pickle"))) == 1
    con = sqlite3.connect(index)
    con.execute("UPDATE patients SET PatientName = 'Zyxwvut^Quirinus' WHERE patient_key = 1")
    con.commit()
    con.close()
    second = cached_matcher(index, cache_dir=tmp_path / "cache")
    assert second is not first and second.scan("Quirinus Zyxwvut")
    assert len(list((tmp_path / "cache").glob("identifiers-*.pickle"))) == 1


def test_a_restarted_runner_loads_the_matcher_from_its_cache(tmp_path: Path, archive: Archive) -> None:
    from jipkit.site.disclosure import identifiers

    cached_matcher(archive.index, cache_dir=tmp_path / "cache")
    identifiers._memory.clear()
    (file,) = (tmp_path / "cache").glob("identifiers-*.pickle")
    before = file.stat().st_mtime_ns
    again = cached_matcher(archive.index, cache_dir=tmp_path / "cache")
    assert file.stat().st_mtime_ns == before and again.sizes["words"] > 0
