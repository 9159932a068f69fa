"""The output policy: safe defaults, validated fields, unknown keys refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import OutputPolicy


def test_the_defaults_are_the_safe_ones() -> None:
    p = OutputPolicy()
    assert p.min_count == 5 and p.images_need_release and p.measures_need_n
    assert set(p.allowed_mime_types) == {"text/plain", "text/html", RECORD_MIME, "image/png", "image/svg+xml"}
    assert p.count_rounding is None


@pytest.mark.parametrize(
    "fields",
    [
        {"min_count": 1},
        {"count_rounding": 1},
        {"float_digits": 0},
        {"allowed_mime_types": ["Text/Plain"]},
        {"max_numbers_in_row": 0},
        {"min_kount": 10},  # a misspelt key never falls back to a default
    ],
)
def test_bad_policies_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OutputPolicy(**fields)  # type: ignore[arg-type]


def test_the_policy_reads_from_toml_like_data() -> None:
    p = OutputPolicy.model_validate(
        {"min_count": 10, "count_rounding": 5, "allowed_mime_types": ["text/plain"]}
    )
    assert (p.min_count, p.count_rounding, p.allowed_mime_types) == (10, 5, ["text/plain"])
