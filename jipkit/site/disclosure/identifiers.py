"""Find a site's identifying values in text: names, IDs, UIDs, birth dates, however written.

:class:`IdentifierMatcher` holds the written forms (:mod:`~jipkit.site.disclosure.forms`)
of every value of the identifying attributes in the site's index
(:data:`~jipkit.site.disclosure.forms.ATTRIBUTE_KINDS`) and finds them in a text.
Exactly what is found:

**Names and other words** (person names, letter-only IDs, institution names)
    in the :func:`~jipkit.site.disclosure.normalize.letters` form of the text (case,
    accents, spaces, punctuation and digits ignored) by one Aho-Corasick automaton
    (pyahocorasick) holding every form: the name's components in any order, with initials
    and German transliterations, each alphabet (``=`` groups) on its own.  A form
    shorter than 10 (CJK characters count twice) must also start and end on token
    boundaries of the original text (:func:`~jipkit.site.disclosure.normalize.is_boundary`:
    spaces and punctuation, letter/digit changes, ``camelCase``, each CJK character) and
    span no digit: ``"Li Yu"`` and ``"YU, Li"`` are found, ``"Julia Yu"`` and
    ``"1e+03 0.0e+00 sd"`` are not.  Longer forms match anywhere (``"xJürgenMüllerx"``,
    ``"Jürgen 2 Müller"``).
**Numbers** (numeric IDs and their value without leading zeros, accession numbers,
    UIDs without dots, birth dates as ``YYYYMMDD``, ``DDMMYYYY``, ``MMDDYYYY``)
    as whole runs of digits: never inside a longer run, never as the decimals of a
    number (``0.12345678``); letters next to them are fine (``MRN12345678``).
    Separators between digits are *not* ignored: with millions of 8-digit MRNs most
    8-digit strings are someone's, and ``"1234 5678"`` is more often two numbers.
**Alphanumeric IDs** (``KV123456789``, ``SYN-000123``, ``ACC-20240311-7``)
    by their longest run of digits (in the compact form, or as the value is written),
    then the whole compact form around it (separators ignored, token boundaries as for
    short words).
**Punctuated tokens** (UIDs as written, birth dates as ``1980-01-02``, ``02.01.1980``,
    ``2.1.1980``, ``01/02/1980``, ``1/2/1980``..., IDs written with separators)
    as whole tokens of digits and ``./-``.
**Birth dates with month names** (``2 Jan 1980``, ``January 2nd, 1980``, ``2. März 1980``)
    read around every month name that stands next to a digit
    (:mod:`~jipkit.site.disclosure.dates`).

Then the same search runs on every decoded view of the text
(:mod:`~jipkit.site.disclosure.encodings`: hex, base64 at every offset, URL encoding,
backslash escapes, HTML character references; nested up to two levels).  In decoded
text a match must not span control characters or undecodable bytes (junk decoded from
an ordinary run holds letters apart), and month names may be glued to junk.

Not found (by design or as a known limit): a value shorter than the policy's minimum
lengths (``Ng^A`` with the default 4); a family or given name alone; a short form glued
to letters of the same script and case (``XXLi Bo``: no token boundary); reversed,
shifted or otherwise recoded text (ROT13, base32, base85, quoted-printable, lists of
code points), and encodings other than the above (UTF-16 of text without Latin letters,
Shift JIS, GB 18030); short numeric IDs with separators inserted (``1234-5678``) or
leading zeros added; alphanumeric IDs whose longest digit run is shorter than the
numeric minimum; dates with two-digit years or month names other than English and
German; digits of other scripts; text drawn in images.

Building the matcher for 1,000,000 values takes seconds: :func:`cached_matcher` keeps one
per index state, in memory and (optionally) on disk.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import pickle
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import ahocorasick  # pyahocorasick ships no type information
import numpy as np

from jipkit.data.schema import level_of
from jipkit.site.disclosure.dates import month_dates
from jipkit.site.disclosure.encodings import candidate_positions, candidates, decode_candidate, decode_lines
from jipkit.site.disclosure.forms import ATTRIBUTE_KINDS, forms_of
from jipkit.site.disclosure.normalize import CompactMap, is_boundary, weight
from jipkit.site.disclosure.tokens import ByteText

__all__ = ["Hit", "IdentifierMatcher", "cached_matcher", "index_values"]

#: Word forms at least this long (and not starting or ending with a digit) match anywhere.
UNBOUNDED_LENGTH: Final = 10
_MAX_DEPTH: Final = 2
_CACHE_LIMIT: Final = 200_000
_FORMAT: Final = 4
_HAS_DIGIT: Final = re.compile("[0-9]")
_DIGIT_RUN: Final = re.compile("[0-9]+")
_DATE: Final = re.compile("^[0-9]{8}")
_TABLES: Final = {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}

#: In decoded text, a match must not span control characters or undecodable bytes: junk
#: decoded from a random run (the digits of a float, read as hex) holds letters apart.
_GARBLED: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f\ufffd]")


@dataclass(frozen=True)
class Hit:
    """An identifying value found in a text.

    Attributes
    ----------
    attribute : str
        The DICOM keyword of the value (``PatientName``, ``PatientID``, ...).
    start, end : int
        The span of the text that holds it (for an encoded value: the whole encoded run
        or line).
    encoding : str
        ``plain``, ``hex``, ``base64``, ``url``, ``escape`` or ``entity``.
    """

    attribute: str
    start: int
    end: int
    encoding: str = "plain"


def _hash64(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class _KeySet:
    """Keys and their attribute codes, kept as sorted 64-bit hashes (10 bytes a key).

    A million keys as a ``dict`` of ``bytes`` take about 130 MB; here about 10 MB.  A
    hash that equals another's by chance (about 1 in 10**13 for a million keys) would
    only report a match where there is none.
    """

    def __init__(self, items: dict[bytes, int]):
        hashes = np.fromiter((_hash64(k) for k in items), dtype=np.uint64, count=len(items))
        codes = np.fromiter(items.values(), dtype=np.uint16, count=len(items))
        order = np.argsort(hashes)
        self.hashes, self.codes = hashes[order], codes[order]
        self.min_length = min((len(k) - sum(k.count(c) for c in b"./-") for k in items), default=0)

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, keys: Iterable[bytes]) -> list[tuple[bytes, int]]:
        """The keys held, with their attribute codes."""
        wanted = list(keys)
        if not wanted or not len(self.hashes):
            return []
        hashes = np.fromiter((_hash64(k) for k in wanted), dtype=np.uint64, count=len(wanted))
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        held = self.hashes[at] == hashes
        return [
            (k, int(c)) for k, c, ok in zip(wanted, self.codes[at].tolist(), held.tolist(), strict=True) if ok
        ]


@dataclass
class _Keys:
    """Everything a matcher holds (pickled as one object)."""

    attributes: tuple[str, ...]
    #: letter-only word forms; each value packs ``length << 12 | code << 1 | needs_boundary``
    automaton: Any
    digits: _KeySet
    punct: _KeySet
    #: alphanumeric forms by their longest digit run: ``[(code, form, needs_boundary)]``
    alnum: dict[bytes, list[tuple[int, str, bool]]]
    #: dates (``YYYYMMDD``) of date attributes, for dates written with month names
    dates: dict[str, int]


def _bounded_match(text: str, start: int, stop: int) -> bool:
    """Whether ``text[start:stop]`` is whole tokens with no digit among them.

    Names are matched with digits ignored (in :func:`~jipkit.site.disclosure.normalize.letters`);
    a short form must not pick its letters from around numbers (``1e+03 0.0e+00 sd``).
    """
    return is_boundary(text, start) and is_boundary(text, stop) and not _HAS_DIGIT.search(text, start, stop)


def _bounded(form: str) -> bool:
    """Whether a word form must start and end on token boundaries to match."""
    return weight(form) < UNBOUNDED_LENGTH or form[0].isdigit() or form[-1].isdigit()


class IdentifierMatcher:
    """The identifying values of a site, ready to be found in text.

    Build one with :meth:`build` (from ``(attribute, value)`` pairs) or
    :meth:`from_index`; :func:`cached_matcher` keeps one per index state.
    """

    def __init__(self, keys: _Keys):
        self._keys = keys
        self._attributes_by_code = keys.attributes
        self._automaton = keys.automaton
        self._digits = keys.digits
        self._punct = keys.punct
        self._alnum = keys.alnum
        self._dates = keys.dates
        lengths = [keys.digits.min_length, *map(len, keys.alnum)]
        self._min_digits = min((n for n in lengths if n), default=0)
        self._min_punct = keys.punct.min_length
        self._decoded: dict[str, tuple[tuple[str, str], ...]] = {}

    # -- building --------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        values: Iterable[tuple[str, str]],
        *,
        min_length: int = 4,
        min_numeric_length: int = 6,
    ) -> IdentifierMatcher:
        """A matcher for ``(attribute, value)`` pairs.

        Parameters
        ----------
        values : iterable of (str, str)
            DICOM keyword and value as the index holds it; attributes not in
            :data:`~jipkit.site.disclosure.forms.ATTRIBUTE_KINDS` are taken as free text.
        min_length : int
            Word forms shorter than this (:func:`~jipkit.site.disclosure.normalize.weight`)
            are left out.
        min_numeric_length : int
            Digit keys with fewer digits are left out (short numbers are everywhere).

        Returns
        -------
        IdentifierMatcher
        """
        codes: dict[str, int] = {}
        words: dict[str, int] = {}
        digits: dict[bytes, int] = {}
        punct: dict[bytes, int] = {}
        keys = _Keys((), None, _KeySet({}), _KeySet({}), {}, {})
        for attribute, raw in values:
            if raw is None or not str(raw).strip():
                continue
            code = codes.setdefault(attribute, len(codes))
            kind = ATTRIBUTE_KINDS.get(attribute, "text")
            forms = forms_of(kind, str(raw))
            written_runs = {r for r in _DIGIT_RUN.findall(str(raw)) if len(r) >= min_numeric_length}
            for w in forms.words:
                if weight(w) < min_length:
                    continue
                if not _HAS_DIGIT.search(w):
                    words.setdefault(w, code)
                    continue
                run = max(_DIGIT_RUN.findall(w), key=len)
                if len(run) >= min_numeric_length:
                    # found by the longest run of the compact form ("ACC202403117") and by
                    # the runs as the value is written ("ACC-20240311-7")
                    for key in {run, *written_runs}:
                        keys.alnum.setdefault(key.encode("ascii"), []).append((code, w, _bounded(w)))
            for d in forms.digits:
                if len(d) >= min_numeric_length:
                    digits.setdefault(d.encode("ascii"), code)
            for p in forms.punct:
                if len(p) - p.count(".") - p.count("-") - p.count("/") >= min_numeric_length:
                    punct.setdefault(p.encode("ascii"), code)
            if kind == "date" and _DATE.match(str(raw).strip()):
                keys.dates.setdefault(str(raw).strip()[:8], code)
        if len(codes) >= 2048:
            raise ValueError("at most 2047 identifying attributes")
        if words:
            keys.automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
            for w, code in words.items():
                keys.automaton.add_word(w, len(w) << 12 | code << 1 | int(_bounded(w)))
            keys.automaton.make_automaton()
        keys.attributes = tuple(codes)
        keys.digits, keys.punct = _KeySet(digits), _KeySet(punct)
        return cls(keys)

    @classmethod
    def from_index(
        cls, index_path: str | os.PathLike[str], *, min_length: int = 4, min_numeric_length: int = 6
    ) -> IdentifierMatcher:
        """A matcher for every identifying value in a site's index (see :func:`index_values`)."""
        return cls.build(
            index_values(index_path), min_length=min_length, min_numeric_length=min_numeric_length
        )

    @property
    def sizes(self) -> dict[str, int]:
        """How many keys of each kind the matcher holds."""
        return {
            "words": len(self._automaton) if self._automaton is not None else 0,
            "digits": len(self._digits),
            "punct": len(self._punct),
            "alnum": sum(map(len, self._alnum.values())),
            "dates": len(self._dates),
        }

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the matcher to ``path`` (mode 0600; a cache only the runner may write)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump((_FORMAT, self._keys), f, protocol=5)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IdentifierMatcher:
        """Read a matcher written by :meth:`save`.

        Raises
        ------
        ValueError
            The file is not a matcher of this format, or another user owns it (it is
            unpickled, so only the runner's own files are read).
        """
        path = Path(path)
        if path.stat().st_uid != os.getuid():
            raise ValueError(f"{path} belongs to another user")
        with path.open("rb") as f:
            data = pickle.load(f)  # the runner's own 0600 file, owner checked above
        if not (
            isinstance(data, tuple) and len(data) == 2 and data[0] == _FORMAT and isinstance(data[1], _Keys)
        ):
            raise ValueError(f"{path} is not a matcher of format {_FORMAT}")
        return cls(data[1])

    # -- finding ---------------------------------------------------------------------

    def scan(self, text: str, tokens: ByteText | None = None) -> list[Hit]:
        """Every identifying value in ``text``, plain or encoded.

        Parameters
        ----------
        text : str
        tokens : ByteText, optional
            ``ByteText(text)``, when the caller has it already.

        Returns
        -------
        list of Hit
            In no particular order; overlapping hits are all reported.
        """
        return self.scan_many([text], tokens)[0]

    def scan_many(self, texts: Sequence[str], tokens: ByteText | None = None) -> list[list[Hit]]:
        """:meth:`scan` for many texts (table cells, values) in one pass over them all.

        Parameters
        ----------
        texts : sequence of str
        tokens : ByteText, optional
            ``ByteText("\\n".join(texts))``, when the caller has it already.

        Returns
        -------
        list of list of Hit
            The hits of each text, positions relative to it.
        """
        joined = _Joined(texts, tokens)
        out = self._plain(joined)
        resolved = {run: found for run, found in self._resolve(candidates(joined.tokens), 1).items() if found}
        for run, positions in candidate_positions(joined.tokens, resolved).items():
            for pos in positions:
                k, start = joined.locate(pos)
                out[k].extend(Hit(attr, start, start + len(run), enc) for attr, enc in resolved[run])
        lines = [(k, line) for k, text in enumerate(texts) for line in decode_lines(text)]
        if lines:
            attrs = self._attributes([decoded for _, (_, decoded, _, _) in lines], 1)
            for (k, (enc, _, start, end)), found_attrs in zip(lines, attrs, strict=True):
                out[k].extend(Hit(attr, start, end, enc) for attr in found_attrs)
        return out

    def _attributes(self, texts: Sequence[str], depth: int) -> list[set[str]]:
        """The attributes each text holds (decoding nested up to :data:`_MAX_DEPTH` levels)."""
        joined = _Joined(texts)
        found = [
            {h.attribute for h in hits if depth == 0 or not _GARBLED.search(text, h.start, h.end)}
            for text, hits in zip(texts, self._plain(joined, decoded=depth > 0), strict=True)
        ]
        if depth >= _MAX_DEPTH:
            return found
        resolved = {
            run: {attr for attr, _ in pairs}
            for run, pairs in self._resolve(candidates(joined.tokens), depth + 1).items()
            if pairs
        }
        for run, positions in candidate_positions(joined.tokens, resolved).items():
            for pos in positions:
                found[joined.locate(pos)[0]] |= resolved[run]
        lines = [(k, decoded) for k, text in enumerate(texts) for _, decoded, _, _ in decode_lines(text)]
        if lines:
            for (k, _), attrs in zip(lines, self._attributes([d for _, d in lines], depth + 1), strict=True):
                found[k] |= attrs
        return found

    def _resolve(self, runs: set[str], depth: int) -> dict[str, tuple[tuple[str, str], ...]]:
        """Which (attribute, encoding) pairs each run holds once decoded.

        Runs of the text itself (``depth`` 1) are remembered: outputs repeat their words.
        """
        cache = self._decoded if depth == 1 else {}
        out = {run: cache[run] for run in runs if run in cache}
        new = [run for run in runs if run not in out]
        if not new:
            return out
        views = [(run, enc, text) for run in new for enc, text in decode_candidate(run)]
        attrs = self._attributes([text for _, _, text in views], depth) if views else []
        found: dict[str, set[tuple[str, str]]] = {run: set() for run in new}
        for (run, enc, _), names in zip(views, attrs, strict=True):
            found[run].update((attr, enc) for attr in names)
        if depth == 1 and len(cache) + len(new) > _CACHE_LIMIT:
            cache.clear()
        for run, pairs in found.items():
            out[run] = cache[run] = tuple(sorted(pairs))
        return out

    def _plain(self, joined: _Joined, *, decoded: bool = False) -> list[list[Hit]]:
        """Hits of each text as written (no decoding); ``decoded``: the texts were decoded."""
        out: list[list[Hit]] = [[] for _ in joined.texts]
        tokens = joined.tokens
        # Keys are looked up among the text's whole digit runs and ID tokens, then found
        # where they stand in one pass (not one search of the text per key found).
        if self._min_digits:
            runs = tokens.digit_runs(self._min_digits)
            codes = dict(self._digits.find(runs))
            alnum = set(filter(self._alnum.__contains__, runs))
            where = tokens.digit_run_positions(self._min_digits, codes.keys() | alnum)
            for key, code in codes.items():
                self._located(joined, where[key], len(key), code, out)
            for key in alnum:
                self._alphanumeric(joined, where[key], len(key), self._alnum[key], out)
        if len(self._punct):
            codes = dict(self._punct.find(tokens.id_tokens(self._min_punct)))
            where = tokens.id_token_positions(self._min_punct, codes)
            for key, code in codes.items():
                self._located(joined, where[key], len(key), code, out)
        if self._dates:
            for start, end, date in month_dates(tokens, loose=decoded):
                if date in self._dates:
                    k, at = joined.locate(start)
                    hit = Hit(
                        self._attributes_by_code[self._dates[date]],
                        at,
                        min(at + end - start, len(joined.texts[k])),
                    )
                    out[k].append(hit)
        if self._automaton is not None:
            self._words(joined, out)
        return out

    def _located(
        self, joined: _Joined, positions: Sequence[int], length: int, code: int, out: list[list[Hit]]
    ) -> None:
        """Hits of a key of ``length`` (ASCII) characters at ``positions`` of the joined text."""
        for pos in positions:
            k, start = joined.locate(pos)
            out[k].append(Hit(self._attributes_by_code[code], start, start + length))

    def _alphanumeric(
        self,
        joined: _Joined,
        positions: Sequence[int],
        length: int,
        forms: list[tuple[int, str, bool]],
        out: list[list[Hit]],
    ) -> None:
        """Alphanumeric forms around each occurrence of their digit run (``length`` digits)."""
        for pos in positions:
            k, at = joined.locate(pos)
            text = joined.texts[k]
            for code, form, bounded in forms:
                left = max(0, at - 3 * len(form))
                window = text[left : at + length + 3 * len(form)]
                mapping = CompactMap(window, digits=True)
                found = mapping.compact.find(form)
                while found >= 0:
                    start, stop = mapping.span(found, found + len(form))
                    if left + start <= at < left + stop and (
                        not bounded or (is_boundary(window, start) and is_boundary(window, stop))
                    ):
                        out[k].append(Hit(self._attributes_by_code[code], left + start, left + stop))
                    found = mapping.compact.find(form, found + 1)

    def _words(self, joined: _Joined, out: list[list[Hit]]) -> None:
        if len(joined.texts) == 1:
            maps = [CompactMap(joined.texts[0], tokens=joined.tokens)]
        else:
            maps = [CompactMap(t) for t in joined.texts]
        if len(maps) == 1:
            text, starts = maps[0].compact, [0]
        else:
            starts, pos = [], 0
            for m in maps:
                starts.append(pos)
                pos += len(m.compact) + 1
            text = "\0".join(m.compact for m in maps)  # no form holds "\0": texts stay apart
        for end, packed in self._automaton.iter(text):
            length, code, bounded = packed >> 12, (packed >> 1) & 2047, packed & 1
            k = bisect.bisect_right(starts, end) - 1
            mapping = maps[k]
            start, stop = mapping.span(end - length + 1 - starts[k], end + 1 - starts[k])
            if bounded and not _bounded_match(mapping.text, start, stop):
                continue
            out[k].append(Hit(self._attributes_by_code[code], start, stop))


class _Joined:
    """Texts joined by line breaks, scanned as one (no run or token crosses a line break)."""

    def __init__(self, texts: Sequence[str], tokens: ByteText | None = None):
        self.texts = list(texts)
        self.text = self.texts[0] if len(self.texts) == 1 else "\n".join(self.texts)
        self.tokens = tokens if tokens is not None and tokens.text == self.text else ByteText(self.text)
        self.starts: list[int] = []
        pos = 0
        for t in self.texts:
            self.starts.append(pos)
            pos += len(t) + 1

    def locate(self, pos: int) -> tuple[int, int]:
        """Which text a position of the joined text is in, and where in it."""
        k = bisect.bisect_right(self.starts, pos) - 1
        return k, pos - self.starts[k]


def index_values(index_path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """Every distinct value of the identifying attributes in a site's index.

    Parameters
    ----------
    index_path : path-like
        The index's SQLite file (opened read-only).

    Yields
    ------
    (str, str)
        DICOM keyword and value.
    """
    con = sqlite3.connect(f"file:{Path(index_path)}?mode=ro", uri=True)
    try:
        for attribute in ATTRIBUTE_KINDS:
            level = level_of(attribute)
            if level is None:  # pragma: no cover - every attribute listed is in the schema
                continue
            sql = f"SELECT DISTINCT {attribute} FROM {_TABLES[level]} WHERE {attribute} IS NOT NULL"
            for (value,) in con.execute(sql):
                yield attribute, str(value)
    finally:
        con.close()


_memory: dict[tuple[str, int, int], tuple[tuple[int, ...], IdentifierMatcher]] = {}
_memory_lock = threading.Lock()


def _index_state(path: Path) -> tuple[int, ...]:
    """What changes when the index is written: size and modification time of its files.

    A write grows the write-ahead log or, once checkpointed, changes the database file;
    an empty log (made by a reader) counts as no log.
    """
    state: list[int] = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{path}{suffix}")
        except FileNotFoundError:
            state.extend((0, 0))
        else:
            state.extend((st.st_size, st.st_mtime_ns if st.st_size else 0))
    return tuple(state)


def cached_matcher(
    index_path: str | os.PathLike[str],
    *,
    min_length: int = 4,
    min_numeric_length: int = 6,
    cache_dir: str | os.PathLike[str] | None = None,
) -> IdentifierMatcher:
    """The matcher of an index, built again only when the index changed.

    Parameters
    ----------
    index_path : path-like
        The site's index.
    min_length, min_numeric_length : int
        See :meth:`IdentifierMatcher.build` (the policy's ``min_identifier_length`` and
        ``min_numeric_identifier_length``).
    cache_dir : path-like, optional
        Also keep the built matcher there (a folder only the runner may write), so that a
        restarted runner does not build it again.

    Returns
    -------
    IdentifierMatcher
    """
    path = Path(index_path).resolve()
    key = (str(path), min_length, min_numeric_length)
    state = _index_state(path)
    with _memory_lock:
        known = _memory.get(key)
        if known is not None and known[0] == state:
            return known[1]
        file: Path | None = None
        if cache_dir is not None:
            digest = hashlib.sha256(repr((key, state, _FORMAT)).encode()).hexdigest()[:32]
            folder = Path(cache_dir)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            file = folder / f"identifiers-{digest}.pickle"
            if file.is_file():
                try:
                    matcher = IdentifierMatcher.load(file)
                except (ValueError, OSError, pickle.UnpicklingError, EOFError):
                    file.unlink(missing_ok=True)
                else:
                    _memory[key] = (state, matcher)
                    return matcher
        matcher = IdentifierMatcher.from_index(
            path, min_length=min_length, min_numeric_length=min_numeric_length
        )
        if file is not None:
            for old in file.parent.glob("identifiers-*.pickle"):
                old.unlink(missing_ok=True)
            matcher.save(file)
        _memory[key] = (state, matcher)
        return matcher
