"""The redaction report: what the site's checks removed or changed, and why, never what.

Each entry names a rule (:data:`RULES`), a place (cell and output index and MIME type,
or record index and, when it is safe to show, the record's name) and a count.  The
removed content itself never appears, nor does any part of it: an identifier's entry
names its attribute (``PatientName``) and how it was encoded (``base64``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["RELEASE_REASONS", "RULES", "Redaction", "ReleaseReason", "marker"]

#: Every rule a redaction may name, with what it means.
RULES: Final[Mapping[str, str]] = {
    "identifier": "an identifying value of the site's index (names, IDs, UIDs, birth dates)",
    "base64_blob": "a run of base64 data",
    "compressed_blob": "a run of base64 or hex data holding compressed or image bytes",
    "hex_blob": "a run of hex data",
    "digit_blob": "a run of digits longer than any number",
    "escaped_bytes": "a line of escaped bytes (a printed bytes value)",
    "number_run": "more numbers in a row than the policy allows (an array, pixel values)",
    "html_active": "a script, event handler or embedded object in HTML or SVG",
    "mime_not_allowed": "a MIME type the policy does not allow",
    "output_too_large": "an output item larger than the policy allows",
    "result_too_large": "an item that would make the result larger than the policy allows",
    "stream_stderr": "stream output other than stdout",
    "error_output": "an error output (tracebacks stay at the site)",
    "unknown_output": "an output of an unknown type",
    "metadata_removed": "output metadata other than image sizes",
    "png_invalid": "an image that is not a valid PNG",
    "png_trailing_data": "data after the end of a PNG",
    "png_unknown_chunk": "a PNG chunk outside the standard (it can hold anything)",
    "record_invalid": "a record that does not follow the record schema",
    "record_name_not_reviewed": "a record name that the reviewed notebook does not contain",
    "record_budget": "a record beyond the policy's number of records per result",
    "record_unlisted": "a record output with no matching record",
    "record_display_replaced": "what a record output showed besides its record, replaced by the checked record",
    "numeric_budget": "an item beyond the policy's number of numeric values per result",
    "k_suppression": "a count below k (value null, suppressed)",
    "recorded_table_display": "a displayed copy of a recorded table, shown as its checked record",
    "secondary_suppression": "a count suppressed so that another cannot be recovered from totals",
    "measure_small_n": "a statistic over fewer than k observations",
    "measure_without_n": "a statistic whose n is unknown",
    "count_not_integer": "a value in a count column that is not a count",
    "count_rounded": "counts rounded to the policy's base",
    "float_rounded": "floats rounded to the policy's significant digits",
}

#: Why a result waits for a data steward's release.
RELEASE_REASONS: Final[Mapping[str, str]] = {
    "image": "an image output (its pixels cannot be checked automatically)",
}

_MARKER: Final = "[removed by site: {}]"


def marker(rule: str) -> str:
    """The text that takes the place of removed content.

    Examples
    --------
    >>> marker("identifier")
    '[removed by site: identifier]'
    """
    return _MARKER.format(rule)


@dataclass(frozen=True)
class Redaction:
    """One entry of the redaction report.

    Attributes
    ----------
    rule : str
        A key of :data:`RULES`.
    place : dict
        ``{"cell": 3, "output": 0, "mime": "text/plain"}`` for an output,
        ``{"record": 2, "name": "patients"}`` for a record (no name when the name itself
        was the problem).
    count : int
        How many values, spans or lines the rule removed or changed there.
    detail : str or None
        For identifiers: the attribute and the encoding, e.g. ``"PatientName (base64)"``.
    """

    rule: str
    place: Mapping[str, Any] = field(default_factory=dict)
    count: int = 1
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        out: dict[str, Any] = {"rule": self.rule, "place": dict(self.place), "count": self.count}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class ReleaseReason:
    """Why a result needs a data steward's release (a key of :data:`RELEASE_REASONS`)."""

    reason: str
    place: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The reason as JSON-ready data."""
        return {"reason": self.reason, "place": None if self.place is None else dict(self.place)}
