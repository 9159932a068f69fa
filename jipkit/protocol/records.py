"""Typed records: what a notebook reports with ``jip.record``, under a versioned MIME type.

A record is a JSON object stored in a ``display_data`` output under
:data:`RECORD_MIME`, validated by :data:`RECORD_SCHEMA`.  Kinds:

``count``
    How many patients, studies, series or instances (``of``) something holds.  The
    disclosure rules act on counts; a suppressed count has ``value: null`` and
    ``suppressed: true``: it is not 0, and aggregation treats it as missing.
``measure``
    A number with an optional ``unit``, the ``n`` it was computed from, and an
    optional standard deviation ``sd`` (for pooled variance across sites).
``table``
    ``{"columns": [...], "rows": [[...], ...]}``; ``count_columns`` names the columns
    that hold counts of ``of``.
``text``
    A short string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import jsonschema

from jipkit.errors import NotebookError

__all__ = ["KINDS", "RECORD_MIME", "RECORD_SCHEMA", "extract_records", "validate_record"]

RECORD_MIME: Final = "application/vnd.jip.record.v1+json"
KINDS: Final = ("count", "measure", "table", "text")
COUNT_OF: Final = ("patients", "studies", "series", "instances")

RECORD_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://jip.invalid/schemas/record/v1",
    "type": "object",
    "required": ["schema", "name", "kind", "value"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "jip.record/1"},
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.:-]{0,99}$"},
        "kind": {"enum": list(KINDS)},
        "value": {},
        "unit": {"type": ["string", "null"], "maxLength": 40},
        "n": {"type": ["integer", "null"], "minimum": 0},
        "sd": {"type": ["number", "null"], "minimum": 0},
        "of": {"enum": [*COUNT_OF, None]},
        "count_columns": {"type": "array", "items": {"type": "string"}},
        "suppressed": {"type": "boolean"},
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": "count"}}},
            "then": {
                "required": ["of"],
                "properties": {
                    "value": {"type": ["integer", "null"], "minimum": 0},
                    "of": {"enum": list(COUNT_OF)},
                },
            },
        },
        {
            "if": {"properties": {"kind": {"const": "measure"}}},
            "then": {"properties": {"value": {"type": ["number", "null"]}}},
        },
        {
            "if": {"properties": {"kind": {"const": "text"}}},
            "then": {"properties": {"value": {"type": ["string", "null"], "maxLength": 2000}}},
        },
        {
            "if": {"properties": {"kind": {"const": "table"}}},
            "then": {
                "properties": {
                    "value": {
                        "type": "object",
                        "required": ["columns", "rows"],
                        "additionalProperties": False,
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "rows": {"type": "array", "items": {"type": "array"}},
                        },
                    }
                }
            },
        },
        {
            # Only a site suppresses: a record marked suppressed carries no value, n or sd
            # (else a notebook could mark its own record suppressed and skip the rounding).
            "if": {"properties": {"suppressed": {"const": True}}, "required": ["suppressed"]},
            "then": {
                "properties": {"value": {"type": "null"}, "n": {"type": "null"}, "sd": {"type": "null"}}
            },
        },
    ],
}

_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise :class:`NotebookError` when ``record`` does not follow the schema."""
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "(record)"
        raise NotebookError(f"Invalid record {record.get('name')!r}: {where}: {e.message}.")


def extract_records(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every record in the outputs of executed cells, in order (invalid ones raise)."""
    out = []
    for cell in cells:
        for o in cell.get("outputs", []) or []:
            data = o.get("data") or {}
            if RECORD_MIME in data:
                rec = dict(data[RECORD_MIME])
                validate_record(rec)
                out.append(rec)
    return out
