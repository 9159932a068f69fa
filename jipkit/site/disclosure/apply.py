"""Check a result before it leaves the site: filter its outputs and records, report, flag.

:func:`check_result` is what the runner calls after a successful run and before it
signs the result.  In order:

1. **Records** (the typed channel), each in turn: the schema; the budget of records;
   identifiers in the name (the record is removed), a name the reviewed notebook does
   not contain (removed); identifiers and blobs in the unit, text values, table columns
   (the record is removed) and cells (the cell is replaced), and numbers that are
   identifiers; then k-suppression, secondary suppression and rounding
   (:mod:`~jipkit.site.disclosure.counts`); then the numeric budget and the size limit.
2. **Outputs**, each item in turn: output type (errors and non-stdout streams never
   leave); MIME allow-list; size limits; record outputs replaced by the checked record
   (their text is written again from it; anything else they showed is reported); text (``text/plain``, stdout) checked for
   identifiers and blobs and redacted **line by line**; HTML checked as the reader sees
   it (:func:`~jipkit.site.disclosure.encodings.markup_text`) and removed whole on any
   finding (HTML cannot be cut safely); SVG checked for identifiers and active content;
   PNG checked for text chunks and hidden data; the numeric budget.
3. **Release**: images (unless the policy lets them out) are flagged ``needs_release``
   (the release queue, :mod:`jipkit.site.release`, holds the result; its own policy may
   hold every result, or those of some studies, too).

Removed content is replaced by :func:`~jipkit.site.disclosure.report.marker`; the report
says where and why, never what.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from jipkit.errors import NotebookError
from jipkit.protocol.records import RECORD_MIME, validate_record
from jipkit.site.disclosure.blobs import count_numbers, find_blobs
from jipkit.site.disclosure.counts import protect
from jipkit.site.disclosure.encodings import ACTIVE_TAGS as _ACTIVE_TAGS
from jipkit.site.disclosure.encodings import markup_parts
from jipkit.site.disclosure.identifiers import Hit, IdentifierMatcher
from jipkit.site.disclosure.images import read_png
from jipkit.site.disclosure.policy import IMAGE_MIME_TYPES, OutputPolicy
from jipkit.site.disclosure.report import Redaction, ReleaseReason, marker
from jipkit.site.disclosure.source import RecordNames
from jipkit.site.disclosure.tokens import ByteText

__all__ = ["CheckedResult", "check_result", "record_text"]

_BLANKS: Final = re.compile(r"[\s\x00-\x1f]+")  # browsers ignore them inside "java script:"
_ATTRIBUTE_NAME: Final = re.compile(r"[\s\"'/]on[a-z]+\s*$")
_IMAGE_META: Final = ("width", "height")
_HARMLESS_META: Final = frozenset({"width", "height", "needs_background", "isolated", "unconfined"})
_OUTPUT_TYPES: Final = ("display_data", "execute_result", "update_display_data")


@dataclass(frozen=True)
class CheckedResult:
    """A result after the site's checks.

    Attributes
    ----------
    outputs : list of dict
        ``[{"cell": i, "outputs": [...]}]`` as they may leave.
    records : list of dict
        The records that may leave, in order.
    redactions : list of Redaction
        What was removed or changed, where, and by which rule.
    release_reasons : list of ReleaseReason
        Why the result must wait for a data steward (empty: it may leave now).
    """

    outputs: list[dict[str, Any]]
    records: list[dict[str, Any]]
    redactions: list[Redaction] = field(default_factory=list)
    release_reasons: list[ReleaseReason] = field(default_factory=list)

    @property
    def needs_release(self) -> bool:
        """Whether a data steward must release the result before it leaves."""
        return bool(self.release_reasons)

    def report(self) -> list[dict[str, Any]]:
        """The redaction report as JSON-ready data (no removed content in it)."""
        return [r.to_dict() for r in self.redactions]


def record_text(rec: Mapping[str, Any]) -> str:
    """The ``text/plain`` of a record output, written from the (checked) record."""
    if rec.get("suppressed"):
        return f"[jip record] {rec['name']} = suppressed"
    if rec["kind"] == "table":
        return f"[jip record] {rec['name']}: table of {len(rec['value']['rows'])} rows"
    extra = " ".join(f"{k}={rec[k]}" for k in ("unit", "n", "sd", "of") if rec.get(k) is not None)
    return f"[jip record] {rec['name']} = {rec['value']} {extra}".rstrip()


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _size(value: Any) -> int:
    return len(_as_text(value).encode("utf-8", "surrogatepass"))


def _numbers_in(value: Any) -> int:
    """Numeric values in a JSON value: numbers, and numbers written in its strings."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int | float):
        return 1
    if isinstance(value, str):
        return count_numbers(value)
    if isinstance(value, Mapping):
        return sum(_numbers_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_numbers_in(v) for v in value)
    return 0


class _Checker:
    """The state of one result's check: budgets used, redactions, release reasons."""

    def __init__(self, policy: OutputPolicy, matcher: IdentifierMatcher, names: RecordNames):
        self.policy, self.matcher, self.names = policy, matcher, names
        self.redactions: list[Redaction] = []
        self.release: list[ReleaseReason] = []
        self.numbers_used = 0
        self.numbers_exhausted = False
        self.bytes_used = 0
        self.removed: dict[int, str] = {}

    # -- reporting -------------------------------------------------------------------

    def redact(self, rule: str, place: Mapping[str, Any], count: int = 1, detail: str | None = None) -> None:
        self.redactions.append(Redaction(rule, dict(place), count, detail))

    def report_hits(self, hits: Sequence[Hit], place: Mapping[str, Any]) -> None:
        for (attribute, encoding), n in sorted(Counter((h.attribute, h.encoding) for h in hits).items()):
            self.redact("identifier", place, n, f"{attribute} ({encoding})")

    # -- budgets ---------------------------------------------------------------------

    def spend_numbers(self, n: int, place: Mapping[str, Any]) -> bool:
        """Whether ``n`` more numeric values fit the budget (reports when they do not)."""
        if n == 0:
            return True
        if self.numbers_exhausted or self.numbers_used + n > self.policy.max_numeric_values:
            self.numbers_exhausted = True
            self.redact("numeric_budget", place, n)
            return False
        self.numbers_used += n
        return True

    def spend_bytes(self, n: int, place: Mapping[str, Any]) -> bool:
        """Whether ``n`` more bytes fit the result's size limit (reports when they do not)."""
        if self.bytes_used + n > self.policy.max_result_bytes:
            self.redact("result_too_large", place)
            return False
        self.bytes_used += n
        return True

    # -- text ------------------------------------------------------------------------

    def _findings(
        self, text: str, place: Mapping[str, Any], tokens: ByteText | None = None
    ) -> list[tuple[int, int, str]]:
        """Spans of identifiers and blobs in ``text`` (reported), as ``(start, end, rule)``."""
        tokens = tokens if tokens is not None else ByteText(text)
        hits = self.matcher.scan(text, tokens)
        self.report_hits(hits, place)
        spans = [(h.start, h.end, "identifier") for h in hits]
        blobs = find_blobs(
            text,
            min_chars=self.policy.min_blob_chars,
            max_numbers=self.policy.max_numbers_in_row,
            tokens=tokens,
        )
        for rule, n in sorted(Counter(b.rule for b in blobs).items()):
            self.redact(rule, place, n)
        spans.extend((b.start, b.end, b.rule) for b in blobs)
        return spans

    def clean_text(self, text: str, place: Mapping[str, Any], tokens: ByteText | None = None) -> str:
        """Text with every line that holds an identifier or a blob replaced by a marker."""
        spans = self._findings(text, place, tokens)
        if not spans:
            return text
        lines = text.splitlines(keepends=True)
        starts, pos = [], 0
        for line in lines:
            starts.append(pos)
            pos += len(line)
        rule_of: dict[int, str] = {}
        for start, end, rule in sorted(spans):
            first = _line_of(starts, start)
            last = _line_of(starts, max(start, end - 1))
            for k in range(first, last + 1):
                rule_of.setdefault(k, rule)
        out: list[str] = []
        k = 0
        while k < len(lines):
            if k not in rule_of:
                out.append(lines[k])
                k += 1
                continue
            last = k  # consecutive lines removed by the same rule share one marker
            while last + 1 < len(lines) and rule_of.get(last + 1) == rule_of[k]:
                last += 1
            ending = lines[last][len(lines[last].rstrip("\r\n")) :]
            out.append(marker(rule_of[k]) + ending)
            k = last + 1
        return "".join(out)

    def value_rule(self, text: str, place: Mapping[str, Any]) -> str | None:
        """The first rule that finds something in ``text`` (reported), or None when it is clean."""
        spans = self._findings(text, place)
        return min(spans)[2] if spans else None

    # -- records ---------------------------------------------------------------------

    def records(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
        """The checked records, position for position (None: removed)."""
        result: list[dict[str, Any] | None] = [None] * len(records)
        pending: list[tuple[int, dict[str, Any]]] = []
        for i, raw in enumerate(records):
            rec = self._record(i, raw)
            if rec is not None:
                pending.append((i, rec))
        protected, changes = protect([r for _, r in pending], self.policy)
        for change in changes:
            i, rec = pending[change.position]
            self.redact(change.rule, {"record": i, "name": rec["name"]}, change.count)
        for (i, _), rec in zip(pending, protected, strict=True):
            if rec is None:
                self._remove(i, "record_invalid")
                continue
            place = {"record": i, "name": rec["name"]}
            if not self.spend_numbers(_numbers_in(rec), place):
                self._remove(i, "numeric_budget")
            elif not self.spend_bytes(_size(rec), place):
                self._remove(i, "result_too_large")
            else:
                result[i] = rec
        return result

    def _record(self, i: int, raw: Mapping[str, Any]) -> dict[str, Any] | None:
        place: dict[str, Any] = {"record": i}
        if i >= self.policy.max_records:
            self.redact("record_budget", place)
            return self._remove(i, "record_budget")
        try:
            validate_record(raw)
        except NotebookError:
            self.redact("record_invalid", place)
            return self._remove(i, "record_invalid")
        rec: dict[str, Any] = json.loads(json.dumps(raw))  # a deep, JSON-only copy
        name = rec["name"]
        hits = self.matcher.scan(name)
        if hits:
            self.report_hits(hits, place)
            return self._remove(i, "identifier")
        if not self.names.allows(name):
            self.redact("record_name_not_reviewed", place)
            return self._remove(i, "record_name_not_reviewed")
        place["name"] = name
        if isinstance(rec.get("unit"), str) and self.value_rule(rec["unit"], place) is not None:
            rec["unit"] = None
        kind, value = rec["kind"], rec["value"]
        if kind == "text" and isinstance(value, str):
            rule = self.value_rule(value, place)
            if rule is not None:
                rec["value"] = marker(rule)
        elif kind in ("count", "measure") and (
            self._number_hits(value, place) or self._number_hits(rec.get("n"), place)
        ):
            rec["value"], rec["suppressed"] = None, True
            for key in ("n", "sd"):
                if key in rec:
                    rec[key] = None
        elif kind == "table":
            columns = " \n".join(str(c) for c in value["columns"])
            column_hits = self.matcher.scan(columns)
            if column_hits:
                self.report_hits(column_hits, place)
                return self._remove(i, "identifier")
            self._table_cells(value["rows"], place)
        return rec

    def _table_cells(self, rows: list[list[Any]], place: Mapping[str, Any]) -> None:
        """Identifiers and blobs in a table's cells, row by row (a name may span two cells).

        Text cells that hold them become a marker; numbers that are identifiers (an ID
        written as a number) become null.
        """
        texts, cells = [], []  # per row: its cells joined by tabs, and where each cell lies
        for r, row in enumerate(rows):
            parts, spans, pos = [], [], 0
            for k, cell in enumerate(row):
                text = _cell_text(cell)
                if text is not None:
                    parts.append(text)
                    spans.append((pos, pos + len(text), k))
                    pos += len(text) + 1
            texts.append("\t".join(parts))
            cells.append((r, spans))
        rules: dict[tuple[int, int], str] = {}
        hits = self.matcher.scan_many(texts)
        self.report_hits([h for row_hits in hits for h in row_hits], place)
        for (r, spans), row_hits in zip(cells, hits, strict=True):
            for h in row_hits:
                for start, end, k in spans:
                    if start < h.end and h.start < end:
                        rules.setdefault((r, k), "identifier")
        joined = "\n".join(texts)
        blobs = find_blobs(joined, min_chars=self.policy.min_blob_chars, numbers=False)
        for rule, n in sorted(Counter(b.rule for b in blobs).items()):
            self.redact(rule, place, n)
        row_starts = list(itertools.accumulate(len(t) + 1 for t in texts[:-1]))
        for b in blobs:
            r = bisect.bisect_right(row_starts, b.start)
            offset = row_starts[r - 1] if r else 0
            for start, end, k in cells[r][1]:
                if start < b.end - offset and b.start - offset < end:
                    rules.setdefault((r, k), b.rule)
        for (r, k), rule in rules.items():
            rows[r][k] = marker(rule) if isinstance(rows[r][k], str) else None

    def _remove(self, i: int, rule: str) -> dict[str, Any] | None:
        """Remember why record ``i`` was removed; None (what a removed record becomes)."""
        self.removed[i] = rule
        return None

    def _number_hits(self, value: Any, place: Mapping[str, Any]) -> bool:
        """Whether a numeric value is an identifier written as a number (reported)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not value.is_integer():
            return False
        hits = self.matcher.scan(str(int(value)))
        self.report_hits(hits, place)
        return bool(hits)

    # -- outputs ---------------------------------------------------------------------

    def outputs(
        self,
        outputs: Sequence[Mapping[str, Any]],
        originals: Sequence[Mapping[str, Any]],
        records: Sequence[dict[str, Any] | None],
    ) -> list[dict[str, Any]]:
        """The checked outputs (record outputs replaced by ``records``, position for position)."""
        out: list[dict[str, Any]] = []
        next_record = 0
        for cell in outputs:
            kept: list[dict[str, Any]] = []
            items = cell.get("outputs") or []
            n_records = sum(_is_record_output(item) for item in items)
            tables = [
                (originals[k], records[k])
                for k in range(next_record, min(next_record + n_records, len(records)))
                if originals[k].get("kind") == "table" and records[k] != originals[k]
            ]
            for j, item in enumerate(items):
                place = {"cell": cell.get("cell"), "output": j}
                kind = item.get("output_type")
                data = item.get("data") if isinstance(item.get("data"), Mapping) else {}
                if kind in _OUTPUT_TYPES and RECORD_MIME in data:
                    if next_record < len(records):
                        rec, rule = records[next_record], self.removed.get(next_record, "record")
                        if rec is not None:
                            self._record_extras(item, originals[next_record], place)
                    else:
                        rec, rule = None, "record_unlisted"
                        self.redact(rule, place)
                    next_record += 1
                    kept.append(self._record_output(rec, rule, place))
                elif kind == "stream":
                    new = self._stream(item, place)
                    if new is not None:
                        kept.append(new)
                elif kind in _OUTPUT_TYPES:
                    shown = _recorded_table(item, tables) if tables else None
                    if shown is not None:
                        self.redact("recorded_table_display", {**place, "mime": "text/plain"})
                        item = {**item, "data": shown}
                    kept.append(self._display(kind, item, place))
                else:
                    self.redact("error_output" if kind == "error" else "unknown_output", place)
            if kept:
                out.append({"cell": cell.get("cell"), "outputs": kept})
        return out

    def _record_extras(
        self, item: Mapping[str, Any], original: Mapping[str, Any], place: Mapping[str, Any]
    ) -> None:
        """Report what a record output shows besides its record: it is written again from the record.

        ``jip.record`` shows a record with its own text and nothing else; other MIME
        types, another text, or metadata beside it never leave (and were not checked).
        """
        data: Mapping[str, Any] = item.get("data") or {}
        try:
            own = record_text(original)
        except (KeyError, TypeError):  # pragma: no cover - the record was validated
            own = None
        extras = [m for m in data if m not in (RECORD_MIME, "text/plain")]
        if "text/plain" in data and _as_text(data["text/plain"]) != own:
            extras.append("text/plain")
        if extras:
            self.redact("record_display_replaced", place, len(extras))
        if item.get("metadata"):
            self.redact("metadata_removed", place)

    def _record_output(
        self, rec: dict[str, Any] | None, rule: str, place: Mapping[str, Any]
    ) -> dict[str, Any]:
        if RECORD_MIME not in self.policy.allowed_mime_types:
            self.redact("mime_not_allowed", {**place, "mime": RECORD_MIME})
            data: dict[str, Any] = {"text/plain": marker("mime_not_allowed")}
        elif rec is None:
            data = {"text/plain": marker(rule)}
        else:
            data = {RECORD_MIME: rec, "text/plain": record_text(rec)}
        return {"output_type": "display_data", "data": data, "metadata": {}}

    def _stream(self, item: Mapping[str, Any], place: Mapping[str, Any]) -> dict[str, Any] | None:
        if item.get("name") != "stdout":
            self.redact("stream_stderr", place)
            return None
        text = self._item_text("text/plain", _as_text(item.get("text", "")), {**place, "mime": "text/plain"})
        return {"output_type": "stream", "name": "stdout", "text": text}

    def _display(self, kind: str, item: Mapping[str, Any], place: Mapping[str, Any]) -> dict[str, Any]:
        data: Mapping[str, Any] = item.get("data") or {}
        new: dict[str, Any] = {}
        first_rule: str | None = None
        for mime, value in data.items():
            where = {**place, "mime": mime}
            before = len(self.redactions)
            cleaned = self._mime_item(str(mime), value, where)
            if cleaned is not None:
                new[mime] = cleaned
            elif first_rule is None and len(self.redactions) > before:
                first_rule = self.redactions[before].rule
        if not new:
            new = {"text/plain": marker(first_rule or "output")}
        out: dict[str, Any] = {"output_type": kind, "data": new, "metadata": self._metadata(item, new, place)}
        if kind == "execute_result":
            count = item.get("execution_count")
            out["execution_count"] = count if isinstance(count, int) and not isinstance(count, bool) else None
        return out

    def _metadata(
        self, item: Mapping[str, Any], data: Mapping[str, Any], place: Mapping[str, Any]
    ) -> dict[str, Any]:
        meta = item.get("metadata")
        if not isinstance(meta, Mapping) or not meta:
            return {}
        kept: dict[str, Any] = {}
        dropped = False
        for key, value in meta.items():
            if key in data and key in IMAGE_MIME_TYPES and isinstance(value, Mapping):
                sizes = {k: v for k, v in value.items() if k in _IMAGE_META and type(v) is int}
                if sizes:
                    kept[key] = sizes
                dropped = dropped or any(k not in _HARMLESS_META for k in value)
            elif key not in _HARMLESS_META:
                dropped = True
        if dropped:
            self.redact("metadata_removed", place)
        return kept

    def _mime_item(self, mime: str, value: Any, place: Mapping[str, Any]) -> Any:
        """One MIME item as it may leave, or None (removed, reported)."""
        if mime not in self.policy.allowed_mime_types:
            self.redact("mime_not_allowed", place)
            return None
        if mime in IMAGE_MIME_TYPES:
            return self._image(mime, value, place)
        text = _as_text(value)
        if mime == "text/html":
            return self._markup(text, place, html=True)
        if mime == "text/plain":
            return self._item_text(mime, text, place)
        if self._too_large(text, place):
            return None
        tokens = ByteText(text)
        if self._findings(text, place, tokens):
            return None
        if not self.spend_numbers(tokens.numbers(), place) or not self.spend_bytes(len(tokens.data), place):
            return None
        return value

    def _too_large(self, text: str, place: Mapping[str, Any]) -> bool:
        limit = self.policy.max_output_bytes
        if len(text) > limit or (
            4 * len(text) > limit and _size(text) > limit
        ):  # UTF-8: 1-4 bytes a character
            self.redact("output_too_large", place)
            return True
        return False

    def _item_text(self, mime: str, text: str, place: Mapping[str, Any]) -> str:
        if self._too_large(text, place):
            return marker("output_too_large")
        tokens = ByteText(text)
        cleaned = self.clean_text(text, place, tokens)
        if cleaned is not text:
            tokens = ByteText(cleaned)
        if not self.spend_numbers(tokens.numbers(), place):
            return marker("numeric_budget")
        if not self.spend_bytes(len(tokens.data), place):
            return marker("result_too_large")
        return cleaned

    def _markup(self, text: str, place: Mapping[str, Any], *, html: bool) -> str | None:
        if self._too_large(text, place):
            return None
        view, names, size = markup_parts(text)
        if _active(text, names):
            self.redact("html_active", place)
            return None
        if html:
            tokens = ByteText(view)
            if self._findings(view, place, tokens) or not self.spend_numbers(tokens.numbers(), place):
                return None
        else:
            hits = self.matcher.scan(view)
            self.report_hits(hits, place)
            if hits:
                return None
        return text if self.spend_bytes(size, place) else None

    def _image(self, mime: str, value: Any, place: Mapping[str, Any]) -> Any:
        if mime == "image/svg+xml":
            kept = self._markup(_as_text(value), place, html=False)
        else:
            kept = self._raster(mime, value, place)
        if kept is not None and self.policy.images_need_release:
            self.release.append(ReleaseReason("image", dict(place)))
        return kept

    def _raster(self, mime: str, value: Any, place: Mapping[str, Any]) -> Any:
        text = _as_text(value)
        if self._too_large(text, place):
            return None
        if mime == "image/png":
            png = read_png(text)
            for problem in dict.fromkeys(png.problems):
                self.redact(problem, place)
            hits = self.matcher.scan("\n".join(png.texts)) if png.texts else []
            self.report_hits(hits, place)
            if png.problems or hits:
                return None
        return value if self.spend_bytes(len(text), place) else None


def _active(markup: str, names: set[str]) -> bool:
    """Whether HTML or SVG holds a script, an event handler, a script URL or an embedded object.

    ``names`` are the markup's unusual tag names (:func:`~jipkit.site.disclosure.encodings.markup_parts`).
    """
    if names & _ACTIVE_TAGS:
        return True
    # "=" and ":" are rare in markup (attributes, CSS): look at what comes before each.
    pos = markup.find(":")
    while pos >= 0:
        before = _BLANKS.sub("", markup[max(0, pos - 40) : pos]).lower()
        if before.endswith(("javascript", "vbscript")):
            return True
        pos = markup.find(":", pos + 1)
    pos = markup.find("=")
    while pos >= 0:
        if _ATTRIBUTE_NAME.search(markup[max(0, pos - 40) : pos].lower()) and markup.rfind(
            "<", 0, pos
        ) > markup.rfind(">", 0, pos):
            return True
        pos = markup.find("=", pos + 1)
    return False


def _is_record_output(item: Mapping[str, Any]) -> bool:
    data = item.get("data")
    return item.get("output_type") in _OUTPUT_TYPES and isinstance(data, Mapping) and RECORD_MIME in data


def _frame(rec: Mapping[str, Any], hidden: str | None = None) -> Any:
    """A table record as a DataFrame (``hidden`` in place of the counts that were suppressed)."""
    import pandas as pd

    value = rec["value"]
    rows = value["rows"]
    if hidden is not None:
        counts = {i for i, c in enumerate(value["columns"]) if c in set(rec.get("count_columns") or ())}
        rows = [[hidden if i in counts and v is None else v for i, v in enumerate(row)] for row in rows]
    return pd.DataFrame(rows, columns=value["columns"])


def _recorded_table(
    item: Mapping[str, Any], tables: Sequence[tuple[Mapping[str, Any], dict[str, Any] | None]]
) -> dict[str, Any] | None:
    """The checked table, when ``item`` displays a table the same cell recorded and the check changed.

    A notebook that records a table often displays it too (``jip.record(..., table);
    table``): the display would show what the record's check suppressed.  It is
    recognised by its text (pandas' ``repr`` of the recorded rows) and shown as the
    checked record instead.
    """
    data = item.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("text/plain"), str | list):
        return None
    plain = _as_text(data["text/plain"])
    for original, checked in tables:
        if repr(_frame(original)) == plain:
            if checked is None:
                return {"text/plain": marker("record")}
            frame = _frame(checked, hidden="suppressed")
            return {"text/plain": repr(frame), "text/html": frame._repr_html_()}
    return None


def _cell_text(cell: Any) -> str | None:
    """A table cell as text to scan: strings, and numbers that could be IDs (integers)."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, bool) or cell is None:
        return None
    if isinstance(cell, int):
        return str(cell)
    if isinstance(cell, float) and cell.is_integer() and abs(cell) < 1e18:
        return str(int(cell))
    return None


def _line_of(starts: Sequence[int], pos: int) -> int:
    """The index of the line that holds ``pos`` (``starts``: each line's first offset)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_result(
    outputs: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    *,
    policy: OutputPolicy,
    matcher: IdentifierMatcher,
    notebook_source: str,
    parameters: Mapping[str, Any] | None = None,
) -> CheckedResult:
    """Apply the site's output policy and automatic checks to a result.

    Parameters
    ----------
    outputs : sequence of dict
        ``[{"cell": i, "outputs": [nbformat outputs]}]`` as the runner collected them
        (:attr:`jipkit.site.execute.Outcome.outputs`).
    records : sequence of dict
        The records, in the order their outputs appear (:attr:`~jipkit.site.execute.Outcome.records`).
    policy : OutputPolicy
        The site's output policy.
    matcher : IdentifierMatcher
        The site's identifying values (:func:`~jipkit.site.disclosure.identifiers.cached_matcher`).
    notebook_source : str
        The reviewed notebook's code (its code cells, joined): record names must appear
        in it (see :class:`~jipkit.site.disclosure.source.RecordNames`).
    parameters : mapping, optional
        The run's parameters (they may fill record-name templates).

    Returns
    -------
    CheckedResult
        The outputs and records that may leave, the redaction report, and whether (and
        why) the result must wait for a data steward's release.

    Examples
    --------
    >>> from jipkit.site.disclosure import IdentifierMatcher, OutputPolicy
    >>> matcher = IdentifierMatcher.build([("PatientName", "Müller^Jürgen")])
    >>> out = [{"cell": 1, "outputs": [{"output_type": "stream", "name": "stdout",
    ...         "text": "12 series\\nfirst: MUELLER, Juergen\\n"}]}]
    >>> checked = check_result(out, [], policy=OutputPolicy(), matcher=matcher, notebook_source="")
    >>> checked.outputs[0]["outputs"][0]["text"]
    '12 series\\n[removed by site: identifier]\\n'
    >>> checked.report()
    [{'rule': 'identifier', 'place': {'cell': 1, 'output': 0, 'mime': 'text/plain'}, 'count': 1, 'detail': 'PatientName (plain)'}]
    """
    checker = _Checker(policy, matcher, RecordNames(notebook_source, parameters))
    checked = checker.records(records)
    new_outputs = checker.outputs(outputs, records, checked)
    return CheckedResult(
        outputs=new_outputs,
        records=[r for r in checked if r is not None],
        redactions=checker.redactions,
        release_reasons=checker.release,
    )
