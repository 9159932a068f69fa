"""A site's output policy: what may leave the site after a run, and in what form.

One policy per site, with safe defaults; the runner applies it to every result before
the result leaves (see :func:`jipkit.site.disclosure.check_result`).  In the site's
TOML file it is meant to sit under the federation table, for example::

    [federation.policy.output]
    min_count = 10                      # k: counts of 1..9 patients leave as "suppressed"
    count_rounding = 5                  # published counts rounded to the nearest 5
    allowed_mime_types = ["text/plain", "application/vnd.jip.record.v1+json"]

Every field is documented below; an unknown key is an error (a misspelt limit must never
silently fall back to its default).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jipkit.protocol.records import RECORD_MIME

__all__ = ["DEFAULT_MIME_TYPES", "IMAGE_MIME_TYPES", "OutputPolicy"]

#: What leaves by default: text, HTML tables, typed records, and plots as PNG or SVG.
DEFAULT_MIME_TYPES = ("text/plain", "text/html", RECORD_MIME, "image/png", "image/svg+xml")

#: MIME types that are images (they go to the release queue unless the policy says not).
IMAGE_MIME_TYPES = frozenset({"image/png", "image/svg+xml", "image/jpeg", "image/gif", "image/webp"})


class OutputPolicy(BaseModel):
    """What may leave this site, and how it is checked on the way out.

    The defaults are the safe ones: a site only ever needs to make them stricter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_mime_types: list[str] = Field(default_factory=lambda: list(DEFAULT_MIME_TYPES))
    """MIME types an output may carry.  Anything else is removed (rule ``mime_not_allowed``).

    Stream output (``stdout``) counts as ``text/plain``.  A site that wants only typed
    records to leave sets ``["application/vnd.jip.record.v1+json"]``: displayed tables
    and printed text are untyped, so k-suppression cannot act on them.
    """
    max_output_bytes: Annotated[int, Field(ge=1)] = 2_000_000
    """The largest single output item (one MIME type of one output, or one stream), in bytes."""
    max_result_bytes: Annotated[int, Field(ge=1)] = 20_000_000
    """The largest result (all kept outputs and records together), in bytes."""

    min_count: Annotated[int, Field(ge=2)] = 5
    """k: a count of patients, studies or series from 1 to k-1 leaves as suppressed.

    Applies to ``count`` records and to the ``count_columns`` of ``table`` records, and
    to the ``n`` of measures.  The site may set it higher; 1 would switch suppression
    off and is refused.
    """
    suppress_zero_counts: bool = False
    """Also suppress counts of 0 (by default a 0 is published: "none" is rarely disclosive)."""
    count_rounding: Annotated[int, Field(ge=2)] | None = None
    """Round every published count to the nearest multiple of this base (e.g. 5); none by default.

    A count that passed k never rounds to 0: it rounds to at least the base.
    """
    float_digits: Annotated[int, Field(ge=1, le=15)] = 4
    """Significant digits kept in the floats of records (measure values and sd, table cells)."""
    measures_need_n: bool = True
    """A measure record without ``n`` is suppressed: its n is unknown, so k cannot be checked."""

    max_records: Annotated[int, Field(ge=0)] = 200
    """Records per result; records beyond it are removed (rule ``record_budget``)."""
    max_numeric_values: Annotated[int, Field(ge=0)] = 10_000
    """Numeric values per result (in records, and numbers written in text outputs).

    Items are taken in order (records first, then outputs); the item that would cross
    the budget, and every later item holding numbers, is removed (rule ``numeric_budget``).
    This bounds covert channels that hide data in many numbers.
    """
    max_numbers_in_row: Annotated[int, Field(ge=1)] = 100
    """More numbers than this in a row, with only separators between them, is a data dump
    (an array, pixel values) and is removed (rule ``number_run``)."""
    min_blob_chars: Annotated[int, Field(ge=16)] = 64
    """Runs of base64 or hex characters at least this long are blobs and are removed."""

    min_identifier_length: Annotated[int, Field(ge=2)] = 4
    """Identifiers shorter than this (letters; CJK characters count twice) are not searched for."""
    min_numeric_identifier_length: Annotated[int, Field(ge=4)] = 6
    """Identifiers made of digits only (IDs, accession numbers) shorter than this are not searched for."""

    images_need_release: bool = True
    """Every image output (PNG, SVG, ...) waits for a data steward's release.

    (Holding every result, or every result of some studies, is the release queue's
    policy: ``federation.policy.release_required`` and ``release_studies``.)
    """

    @field_validator("allowed_mime_types")
    @classmethod
    def _mime_types(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if "/" not in m or m != m.strip().lower()]
        if bad:
            raise ValueError(f"expected lowercase MIME types such as 'text/plain', found {bad}")
        return v
