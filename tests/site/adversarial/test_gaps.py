"""The gaps the corpus found in the checks, each pinned down without a kernel.

- a blob written in pieces (base64 or hex wrapped below ``min_blob_chars``, or in groups);
- a short name in a script without case, glued to Latin junk (``x`` + Hebrew, base64);
- names in ISO 8859-1 or UTF-16 bytes, base64- or hex-encoded;
- an alphanumeric ID written as stored, with separators between its digit groups;
- a record output showing more than its record (other text, other MIME types, metadata);
- the time to find many distinct identifiers in one output (it was quadratic).
"""

from __future__ import annotations

import base64
import textwrap
import time
from typing import Any

import numpy as np
import pytest

from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import IdentifierMatcher, OutputPolicy, check_result
from jipkit.site.disclosure.blobs import find_blobs

PIXELS = np.random.default_rng(1).integers(-1024, 3000, size=(40, 32)).astype(np.int16).tobytes()
MATCHER = IdentifierMatcher.build(
    [
        ("PatientName", "כהן^שרה"),
        ("PatientName", "Müller^Jürgen"),
        ("PatientName", "Ödegård^Åsa"),
        ("AccessionNumber", "ACC-20240311-7"),
    ]
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("\n".join(textwrap.wrap(base64.b64encode(PIXELS).decode(), 60)), "base64_blob"),
        (" ".join(textwrap.wrap(base64.b64encode(PIXELS).decode(), 12)), "base64_blob"),
        ("\n".join(textwrap.wrap(PIXELS.hex(), 48)), "hex_blob"),
    ],
)
def test_a_blob_in_pieces_is_a_blob(text: str, rule: str) -> None:
    blobs = [b for b in find_blobs(text) if b.rule == rule]
    assert sum(b.end - b.start for b in blobs) > 0.8 * len(text.replace("\n", "").replace(" ", ""))
    checked = check_result(
        [{"cell": 1, "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}],
        [],
        policy=OutputPolicy(),
        matcher=MATCHER,
        notebook_source="",
    )
    left = checked.outputs[0]["outputs"][0]["text"].splitlines()
    assert f"[removed by site: {rule}]" in left and all(
        line.startswith("[removed by site: ") for line in left
    )


def test_ordinary_short_tokens_are_not_pieces_of_a_blob() -> None:
    text = "series_CT Thorax Br40 t1_mprage_tra job-9a3b2c259987 SOMATOM ResNet50 " * 40
    assert find_blobs(text) == []


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(b"x" + "כהן^שרה".encode()).decode(),
        base64.b64encode(b"xy" + "כהן^שרה".encode()).decode(),
        "xכהן שרה",
        base64.b64encode("Müller^Jürgen".encode("latin-1")).decode(),
        "Ödegård Åsa".encode("latin-1").hex(),
        base64.b64encode("Müller, Jürgen".encode("utf-16-le")).decode(),
        "ACC-20240311-7",
        "acc 20240311 7",
        "ACC202403117",
    ],
)
def test_the_forms_the_corpus_found_missing_are_found(text: str) -> None:
    assert MATCHER.scan(text), text


def test_an_alphanumeric_id_needs_all_of_its_digits() -> None:
    assert MATCHER.scan("ACC-20240311-8") == [] and MATCHER.scan("20240311") == []


def _record_output(text: str, **extra: object) -> tuple[dict[str, Any], dict[str, Any]]:
    rec = {"schema": "jip.record/1", "name": "note", "kind": "text", "value": "ok"}
    return {
        "output_type": "display_data",
        "data": {RECORD_MIME: rec, "text/plain": text, **extra},
        "metadata": {"patient": "Müller^Jürgen"} if extra else {},
    }, rec


def test_what_a_record_output_shows_besides_its_record_is_reported() -> None:
    own, rec = _record_output("[jip record] note = ok")
    other, _ = _record_output("[jip record] note = Müller, Jürgen")
    extra, _ = _record_output("[jip record] note = ok", **{"text/html": "<b>Müller</b>"})
    outputs: list[dict[str, Any]] = [{"cell": i, "outputs": [o]} for i, o in enumerate((own, other, extra))]
    checked = check_result(
        outputs, [rec, rec, rec], policy=OutputPolicy(), matcher=MATCHER, notebook_source='"note"'
    )
    assert [(r["rule"], r["place"]["cell"]) for r in checked.report()] == [
        ("record_display_replaced", 1),
        ("record_display_replaced", 2),
        ("metadata_removed", 2),
    ]
    assert all(o["outputs"][0]["data"]["text/plain"] == "[jip record] note = ok" for o in checked.outputs)


def test_many_identifiers_in_one_output_are_found_in_linear_time() -> None:
    rng = np.random.default_rng(0)
    ids = [f"{v:08d}" for v in rng.choice(10**8, size=20_000, replace=False)]
    matcher = IdentifierMatcher.build([("PatientID", i) for i in ids])
    text = "\n".join(f"MRN {i} {base64.b64encode(i.encode()).decode()}" for i in ids)
    t0 = time.perf_counter()
    hits = matcher.scan(text)
    assert time.perf_counter() - t0 < 10  # was minutes: one search of the whole text per identifier found
    assert len(hits) == 2 * len(ids)
