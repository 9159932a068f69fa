"""The adversarial notebook corpus, run end to end through the site's runner.

Each notebook of ``notebooks/`` is signed as a job, leased from a fake coordinator and
run by the real :class:`~jipkit.site.runner.Runner`: envelope checks, a kernel in the
sandbox reading the site's data through the data channel, the output checks, the
release queue, and the signed result as uploaded.  Each code cell is one attempt to get
something out (tagged ``attempt:<name>``); the tests assert, per attempt, what its
``expect:`` tags say:

``expect:<rule>``
    the result's redaction report names that cell under that rule (a record's entry
    counts for the cell that recorded it);
``expect:release``
    the cell's image stays, and the result waited for a data steward's release;
``expect:refused``
    the sandbox refused it: every line the cell printed says ``blocked:`` (and, below,
    nothing reached the host's listeners, no secret is in any result, no file was
    written outside the scratch folder);
``expect:contained``
    it worked inside the sandbox and left nothing on the host;
``expect:failed``
    the whole run failed, and only its status left.

Then, for every result: nothing identifying is in it, in any written form the test
derives from the index independently of the checks (and nothing the site's matcher
finds either); and the shipped vetted notebooks (``notebooks/*.ipynb``) come through
the same path with no redaction at all.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import RULES
from jipkit.site.disclosure.counts import COUNT_RULES
from jipkit.site.disclosure.forms import ATTRIBUTE_KINDS
from jipkit.site.disclosure.images import read_png
from jipkit.site.disclosure.normalize import compact, weight
from tests.site.adversarial.conftest import (
    NOTEBOOKS,
    ROOT,
    TARGETS,
    Attempt,
    Corpus,
    CorpusRun,
    CorpusSite,
    Hospital,
    Listeners,
    attempts_of,
    index_rows,
    sandbox_only,
)
from tests.site.conftest import SANDBOX_AVAILABLE

pytestmark = pytest.mark.slow

#: Notebooks whose attempts would really escape without the sandbox.
SANDBOXED = ("network", "host")
#: Notebooks whose run fails as a whole (the attempt is the run's last cell).
FAILING = ("fails_exception", "fails_record")
CORPUS = ("identifiers", "pixels", "images", "records", *SANDBOXED, *FAILING)
SHIPPED = sorted((ROOT / "notebooks").glob("*.ipynb"))
MARKER = f"jip-adversarial-{uuid.uuid4().hex[:12]}"


def _attempts() -> Iterator[Any]:
    for name in CORPUS:
        marks = [sandbox_only()] if name in SANDBOXED else []
        for a in attempts_of(NOTEBOOKS / f"{name}.ipynb"):
            yield pytest.param(a, id=a.id, marks=marks)


def _notebooks() -> Iterator[Any]:
    for name in CORPUS:
        yield pytest.param(name, id=name, marks=[sandbox_only()] if name in SANDBOXED else [])


@pytest.fixture(scope="session")
def run_of(corpus: Corpus, corpus_site: CorpusSite, listeners: Listeners) -> Any:
    """A function: a corpus notebook's run (run once, on first use)."""

    def run(name: str) -> CorpusRun:
        parameters: dict[str, Any] = {}
        if name == "network":
            parameters = listeners.parameters
        elif name == "host":
            parameters = {"paths": json.dumps(corpus_site.paths), "marker": MARKER, "runner_pid": os.getpid()}
        return corpus.run(NOTEBOOKS / f"{name}.ipynb", parameters)

    return run


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _readable(outputs: list[dict[str, Any]]) -> str:
    """Outputs as text: their JSON, and the text chunks of their PNG images."""
    texts = [json.dumps(outputs, ensure_ascii=False)]
    for o in outputs:
        if "image/png" in o.get("data", {}):
            texts += read_png(_text(o["data"]["image/png"])).texts
    return "\n".join(texts)


def _strings(value: Any) -> Iterator[str]:
    """Every string and number in a JSON value (keys too)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


# -- the archive ------------------------------------------------------------------------


def test_the_archive_holds_realistic_identifiers(hospital: Hospital) -> None:
    rows = index_rows(hospital.index, "SELECT PatientName, PatientID, PatientBirthDate FROM patients")
    names = {r[0] for r in rows}
    for t in TARGETS:  # accents, a two-letter name, a Japanese name in ISO_IR 192, read back as written
        assert (t.name, t.patient_id, t.birth_date) in rows
    assert {
        "Ng^A",
        "Li^Yu",
        "山田^太郎",
        "Διονυσιος",
        "כהן^שרה",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
    } <= names
    assert all(len(r[1]) == 8 and r[1].isdigit() for r in rows)  # 8-digit MRNs, some with leading zeros
    assert any(r[1].startswith("0") for r in rows) and len(rows) == 64
    studies = index_rows(hospital.index, "SELECT AccessionNumber FROM studies")
    assert {t.accession for t in TARGETS} <= {r[0] for r in studies}
    institutions = {r[0] for r in index_rows(hospital.index, "SELECT InstitutionName FROM series")}
    assert "Clínica Santa Úrsula" in institutions and "Universitätsklinikum Synthstadt" in institutions


# -- each attempt -----------------------------------------------------------------------


@pytest.mark.parametrize("attempt", list(_attempts()))
def test_each_attempt_is_blocked_or_neutralised(attempt: Attempt, run_of: Any, corpus: Corpus) -> None:
    run = run_of(attempt.notebook)
    assert attempt.expect, f"{attempt.id}: no expect: tag"
    if "failed" in attempt.expect:
        assert run.document["status"] == "failed" and run.report.status == "failed"
        return
    assert run.document["status"] == "succeeded", (run.document["reason"], run.document["failed_cell"])
    found = run.rules_at(attempt.cell)
    for rule in attempt.expect - {"release", "refused", "contained"}:
        assert rule in RULES, rule
        assert rule in found, f"{attempt.id}: expected {rule} at cell {attempt.cell}, found {sorted(found)}"
    left = run.outputs_at(attempt.cell)
    hits = corpus.matcher.scan(json.dumps(left, ensure_ascii=False))
    assert hits == [], f"{attempt.id}: identifiers left the site: {hits}"
    if attempt.expect & {"identifier", "stream_stderr"}:  # the attempt did write identifiers
        original = _readable(run.original_outputs_at(attempt.cell))
        assert corpus.matcher.scan(original), f"{attempt.id}: the notebook printed no identifier"
    if "release" in attempt.expect:
        assert run.held is not None and "image" in run.held.reasons
        assert any("image/png" in o.get("data", {}) for o in left), f"{attempt.id}: the image is gone"
    if "refused" in attempt.expect:
        lines = run.stdout_at(attempt.cell).splitlines()
        assert lines and all(line.startswith("blocked: ") for line in lines), (attempt.id, lines)
    if "contained" in attempt.expect:
        assert run.stdout_at(attempt.cell).startswith("wrote "), attempt.id


# -- each result ------------------------------------------------------------------------


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _name_forms(value: str) -> set[str]:
    out: set[str] = set()
    for group in value.split("="):
        parts = [p for p in group.split("^")[:3] if p]  # family, given, middle (not prefix, suffix)
        if not parts:
            continue
        for spelling in (parts, [_strip_accents(p) for p in parts]):
            for order in (spelling, spelling[::-1]):
                out |= {" ".join(order), ", ".join(order), "".join(order), "^".join(order), "_".join(order)}
    return out


def written_forms(
    attribute: str, value: str, *, min_length: int, min_digits: int
) -> tuple[set[str], set[str]]:
    """How a value could be written in a result (the test's own list, independent of the checks).

    Returns the plain forms (casefolded: components in both orders, with and without
    accents, with spaces, commas, carets, underscores or nothing between them; dates as
    ISO, German and US dates; IDs with and without leading zeros or dots) and encoded
    forms (URL-encoded, HTML character references, Python and JSON escapes; hex, and
    base64 of the value's bytes from each alignment on, in UTF-8, ISO 8859-1 and UTF-16).  Forms shorter than the policy's minimum lengths are left out: the site
    does not search for them (documented; see
    ``test_short_names_follow_the_documented_minimum_length``).
    """
    kind = ATTRIBUTE_KINDS[attribute]
    if kind == "name":
        plain = _name_forms(value)
    elif kind == "date":
        d = dt.datetime.strptime(value[:8], "%Y%m%d").date()
        plain = {value, d.isoformat(), d.strftime("%d.%m.%Y"), d.strftime("%m/%d/%Y"), d.strftime("%d/%m/%Y")}
    elif kind in ("id", "uid"):
        plain = {value, value.replace(".", "")}
        if value.isdigit():
            plain.add(value.lstrip("0"))
    else:
        plain = {value, _strip_accents(value)}
    kept = set()
    for form in plain:
        c = compact(form)
        if (c.isdigit() and len(c) >= min_digits) or (not c.isdigit() and weight(c) >= min_length):
            kept.add(form)
    encoded = set()
    for form in kept:
        encoded |= {
            urllib.parse.quote(form),
            form.encode("ascii", "xmlcharrefreplace").decode(),
            ascii(form)[1:-1],
            json.dumps(form)[1:-1],
        } - {form}
        for raw in {form.encode(), form.encode("latin-1", "ignore"), form.encode("utf-16-le")}:
            encoded.add(raw.hex())
            for k in range(3):  # the value's bytes from each alignment on, whole 3-byte groups only
                core = raw[k:][: (len(raw) - k) // 3 * 3]
                if len(core) >= 6:
                    encoded.add(base64.b64encode(core).decode())
    return {f.casefold() for f in kept}, {e for e in encoded if len(e) >= 8}


def _pattern(form: str) -> re.Pattern[str]:
    """A plain form, not inside a longer word or number (as the site's matcher reads short forms)."""
    if compact(form).isdigit():
        return re.compile(rf"(?<![0-9]){re.escape(form)}(?![0-9])")
    return re.compile(rf"(?<![^\W\d_]){re.escape(form)}(?![^\W\d_])")


_FORMS: dict[str, list[tuple[str, set[str], set[str]]]] = {}


def _all_forms(hospital: Hospital, corpus: Corpus) -> list[tuple[str, set[str], set[str]]]:
    """:func:`written_forms` of every identifying value of the archive (computed once)."""
    key = str(hospital.index)
    if key not in _FORMS:
        policy = corpus.site.config.federation.policy.output  # type: ignore[union-attr]
        _FORMS[key] = [
            (
                f"{attribute} {value!r}",
                *written_forms(
                    attribute,
                    value,
                    min_length=policy.min_identifier_length,
                    min_digits=policy.min_numeric_identifier_length,
                ),
            )
            for attribute, value in hospital.values
        ]
    return _FORMS[key]


def _leaks(doc: dict[str, Any], hospital: Hospital, corpus: Corpus) -> list[str]:
    """Every identifying value of the site found in a result document, in any written form."""
    strings = list(_strings(doc))
    raw = "\n".join(strings)
    folded = raw.casefold()
    found = []
    for label, plain, encoded in _all_forms(hospital, corpus):
        found += [f"{label} as {f!r}" for f in plain if f in folded and _pattern(f).search(folded)]
        found += [f"{label} encoded as {f!r}" for f in encoded if f in raw]
    hits = corpus.matcher.scan_many(strings)
    found += [f"matcher: {s[h.start : h.end]!r}" for s, hs in zip(strings, hits, strict=True) for h in hs]
    return found


@pytest.mark.parametrize("name", list(_notebooks()))
def test_nothing_identifying_is_in_the_result(
    name: str, run_of: Any, hospital: Hospital, corpus: Corpus
) -> None:
    run = run_of(name)
    assert run.report.delivered and run.document["site"] == corpus.site.fixture.name
    assert _leaks(run.document, hospital, corpus) == []
    if run.held is not None:  # what the data steward saw is what left
        assert _leaks(run.held.document, hospital, corpus) == []
        assert run.held.document["outputs"] == run.document["outputs"]
    assert {entry["rule"] for entry in run.redactions} <= set(RULES)
    assert run.document["isolation"] == ("sandbox" if SANDBOX_AVAILABLE else "none")
    if any(a.expect - {"refused", "contained", "failed"} for a in attempts_of(NOTEBOOKS / f"{name}.ipynb")):
        assert run.redactions, "a corpus notebook came through with nothing removed"


def test_the_checks_see_through_every_written_form(hospital: Hospital, corpus: Corpus) -> None:
    """The test's own plain forms are what the checks claim to find (so the search above is fair)."""
    texts = [
        (label, text)
        for label, plain, _ in _all_forms(hospital, corpus)
        for form in plain
        for text in (form, base64.b64encode(form.encode()).decode(), form.encode().hex())
    ]
    hits = corpus.matcher.scan_many([f"x {text} y" for _, text in texts])
    assert [t for t, h in zip(texts, hits, strict=True) if not h] == []


def test_short_names_follow_the_documented_minimum_length(run_of: Any, corpus: Corpus) -> None:
    """``Li^Bo`` (4 letters) is searched for; ``Ng^A`` (3) is below the policy's minimum
    identifier length (4) and is not: a known, documented limit."""
    policy = corpus.site.config.federation.policy.output  # type: ignore[union-attr]
    assert weight(compact("Li^Bo")) == policy.min_identifier_length > weight(compact("Ng^A"))
    run = run_of("identifiers")
    cell = next(a.cell for a in attempts_of(NOTEBOOKS / "identifiers.ipynb") if a.name == "name-dicom-form")
    printed = _text(run.original_outputs_at(cell)[0]["text"]).splitlines()
    assert "Li^Bo" in printed and "Ng^A" in printed
    left = run.stdout_at(cell).splitlines()
    assert "Li^Bo" not in left and "Ng^A" in left
    hard = next(a.cell for a in attempts_of(NOTEBOOKS / "identifiers.ipynb") if a.name == "hardcoded-names")
    assert "Li Bo" not in run.stdout_at(hard)


# -- the sandbox ------------------------------------------------------------------------


@sandbox_only()
def test_nothing_reached_the_host(
    run_of: Any, listeners: Listeners, corpus_site: CorpusSite, corpus: Corpus
) -> None:
    runs = [run_of(name) for name in SANDBOXED]
    assert all(r.document["isolation"] == "sandbox" for r in runs)
    assert listeners.received() == []
    for run in corpus.runs.values():
        text = run.body.decode("utf-8")
        for what, secret in corpus_site.secrets.items():
            assert secret not in text, f"{run.name}: the site's {what} left in its result"
    for folder in (
        corpus_site.paths["site_root"],
        corpus_site.paths["runs"],
        corpus_site.paths["dicom_folder"],
    ):
        assert not list(Path(folder).rglob(f"*{MARKER}*")), folder
    for folder in ("/usr/local", "/etc", "/var/tmp", "/root", "/", "/tmp"):
        assert not list(Path(folder).glob(f"*{MARKER}*")), folder


# -- the release queue ------------------------------------------------------------------


def test_images_wait_for_a_data_steward(run_of: Any) -> None:
    run = run_of("images")
    assert run.report.status == "held" and run.held is not None
    assert run.held.reasons == ["image"]
    assert run.held.redactions == run.redactions  # the steward sees the redaction report
    assert run.document["release"]["decision"] == "approved"
    kept = [a for a in attempts_of(NOTEBOOKS / "images.ipynb") if "release" in a.expect]
    shown = [
        c["cell"]
        for c in run.document["outputs"]
        if any("image/png" in o["data"] for o in c["outputs"] if "data" in o)
    ]
    assert sorted(shown) == sorted(a.cell for a in kept)  # every other image was removed


# -- failed runs ------------------------------------------------------------------------


def test_a_failed_run_sends_its_status_only(run_of: Any) -> None:
    exc = run_of("fails_exception").document
    assert (exc["status"], exc["reason"], exc["exception"]) == (
        "failed",
        "cell_error",
        None,
    )  # not a built-in
    assert exc["failed_cell"] == attempts_of(NOTEBOOKS / "fails_exception.ipynb")[0].cell
    rec = run_of("fails_record").document
    assert (rec["status"], rec["reason"], rec["failed_cell"]) == ("failed", "output_invalid", None)
    for doc in (exc, rec):
        assert doc["outputs"] == [] and doc["records"] == [] and "redactions" not in doc


# -- the shipped notebooks --------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_the_shipped_notebooks_come_through_unchanged(path: Path, corpus: Corpus, hospital: Hospital) -> None:
    """No false redaction: nothing of a vetted notebook's output is taken for an identifier,
    raw data or anything else; only the count rules may act, where the archive's own counts
    are small (``cohort_overview`` runs on an archive where none is)."""
    run = corpus.run(path)
    if run.document["status"] != "succeeded" and path.stem != "cohort_overview":
        pytest.skip(f"{path.name} needs data this archive lacks ({run.document['reason']})")
    assert run.document["status"] == "succeeded", (run.document["reason"], run.document["failed_cell"])
    if path.stem == "cohort_overview":
        assert run.redactions == []
    assert [r for r in run.redactions if r["rule"] not in COUNT_RULES] == []
    assert run.executed is not None
    records = [
        o["data"][RECORD_MIME]
        for c in run.executed["cells"]
        for o in c.get("outputs", [])
        if RECORD_MIME in o.get("data", {})
    ]
    assert run.document["records"] == records and records
    assert _leaks(run.document, hospital, corpus) == []
