"""Raw data in text: base64, hex, compressed and escaped bytes, long runs of numbers."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from jipkit.site.disclosure.blobs import count_numbers, find_blobs

PIXELS = np.random.default_rng(0).integers(-1024, 3000, size=(24, 24)).astype(np.int16)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (base64.b64encode(PIXELS.tobytes()).decode(), "base64_blob"),
        (base64.urlsafe_b64encode(PIXELS.tobytes()).decode(), "base64_blob"),
        (base64.b64encode(zlib.compress(PIXELS.tobytes())).decode(), "compressed_blob"),
        (PIXELS.tobytes().hex(), "hex_blob"),
        ("".join(str(abs(int(v))) for v in PIXELS.ravel()[:40]), "digit_blob"),
        (str(PIXELS.tobytes()[:200]), "escaped_bytes"),
        (str(PIXELS), "number_run"),
        (str(PIXELS.tolist()), "number_run"),
        (", ".join(f"{v:.3f}" for v in PIXELS.ravel()[:300] / 7), "number_run"),
        (" ".join(f"{b:02x}" for b in PIXELS.tobytes()[:300]), "number_run"),
        (", ".join(f"0x{b:02x}" for b in PIXELS.tobytes()[:300]), "number_run"),
        ("\n".join(" ".join(str(v) for v in row) for row in PIXELS), "number_run"),
    ],
)
def test_raw_data_is_found(text: str, rule: str) -> None:
    blobs = find_blobs(f"result:\n{text}\ndone")
    assert rule in {b.rule for b in blobs}
    assert all(0 <= b.start < b.end <= len(text) + 13 for b in blobs)


@pytest.mark.parametrize(
    "text",
    [
        "a_very_long_snake_case_identifier_that_keeps_going_on_and_on_and_on_forever_and_ever",
        "/work/main/notebooks/cohort_overview.ipynb ran in 2.3 s on 2024-03-01",
        "   Modality BodyPartExamined  year  series\n0  CT  CHEST  2019  12\n1  MR  HEAD  2020  7\n" * 30,
        "epoch 3/50 loss=0.2341 dice=0.8812 lr=1.0e-04 12.3s\n" * 50,
        "mean 4712.5 ml (sd 812.0, n 40)",
        "https://jip.example.org/studies/lung-ct-2024/runs/abc",
    ],
)
def test_ordinary_output_is_not_raw_data(text: str) -> None:
    assert find_blobs(text) == []


def test_the_number_limit_is_the_policys() -> None:
    row = " ".join(str(i) for i in range(30))
    assert find_blobs(row, max_numbers=100) == []
    assert [b.rule for b in find_blobs(row, max_numbers=20)] == ["number_run"]
    assert find_blobs(row, max_numbers=20, numbers=False) == []


def test_blob_spans_are_character_offsets_in_non_ascii_text() -> None:
    run = base64.b64encode(PIXELS.tobytes()[:100]).decode()
    text = f"Größe: {run} — ok"
    (blob,) = find_blobs(text)
    assert text[blob.start : blob.end].rstrip("=") == run.rstrip("=")


def test_numbers_are_counted_whole() -> None:
    assert count_numbers("4712.5 and 1.2.3 and end. 12 -3 1e-05") == 6
    assert count_numbers("no numbers here.") == 0
