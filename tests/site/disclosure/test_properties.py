"""Property-based checks (hypothesis), so that the matcher is not tuned to a corpus.

- The compact form is defined per character, and maps back to the original text.
- A random identifier from realistic alphabets (accented Latin, Greek, Cyrillic, Hebrew,
  Chinese and Japanese, Korean), written in a random form (component order, case, accents,
  separators), encoded at random (hex, base64 at every offset, URL, escapes, references,
  nested) and put between random text, is always found.
- Random text of counts and measures never is, against the identifiers of a real archive
  and 20,000 random MRNs.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import random
import unicodedata
import urllib.parse
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jipkit.site.disclosure import IdentifierMatcher
from jipkit.site.disclosure.normalize import CompactMap, compact, letters
from jipkit.site.disclosure.tokens import ByteText

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LATIN = "abcdefghijklmnopqrstuvwxyzáàâäãåçéèêëíìîïñóòôöõúùûüýÿßøłæ"
ALPHABETS = [
    LATIN,
    "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ",
    "абвгдеёжзийклмнопрстуфхцчшщыэюя",
    "אבגדהוזחטיכלמנסעפצקרשת",
    "王李张刘陈杨黄赵吴周山田中村佐藤鈴木高橋渡辺伊小林加太郎花子",
    "김이박최정강조윤장임민서준하은지",
]
SEPARATORS = [" ", ", ", ",", ".", "_", "-", "  ", "\t", "^", " / "]
SURROUNDING = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=30)


@st.composite
def names(draw: st.DrawFn) -> tuple[str, str]:
    """(family, given) from one script, long enough to be searched for."""
    alphabet = draw(st.sampled_from(ALPHABETS))
    wide = alphabet in ALPHABETS[4:]
    size = st.integers(1, 3) if wide else st.integers(2, 9)
    family = "".join(
        draw(st.lists(st.sampled_from(alphabet), min_size=size.example() if False else 1, max_size=9))
    )
    given_ = "".join(draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=9)))
    if len(letters(family + given_)) < (2 if wide else 4):
        family += alphabet[0] * 3
    return family.capitalize(), given_.capitalize()


def written(draw: Callable[..., Any], family: str, given_: str) -> str:
    parts = draw(st.permutations([family, given_]))
    text = draw(st.sampled_from(SEPARATORS)).join(parts)
    case: Callable[[str], str] = draw(st.sampled_from([str, str.upper, str.lower, str.title]))
    text = case(text)
    if draw(st.booleans()):  # accents stripped
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text


def _b64(prefix: bytes) -> Callable[[str], str]:
    return lambda s: base64.b64encode(prefix + s.encode()).decode()


ENCODINGS: list[Callable[[str], str]] = [
    lambda s: s,
    lambda s: s.encode().hex(),
    lambda s: s.encode().hex().upper(),
    _b64(b""),
    _b64(b"\x00"),
    _b64(b"\x00\x01"),
    lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    lambda s: "QUIg" + base64.b64encode(s.encode()).decode(),  # another payload ("AB ") before it
    lambda s: urllib.parse.quote(s),
    lambda s: urllib.parse.quote_plus(s),
    lambda s: "".join(f"\\x{b:02x}" for b in s.encode()),
    lambda s: s.encode("unicode_escape").decode(),
    lambda s: "".join(f"&#{ord(c)};" for c in s),
    lambda s: "".join(f"&#x{ord(c):x};" for c in s),
    lambda s: html.escape(s),
    lambda s: base64.b64encode(s.encode().hex().encode()).decode(),
]


def embed(draw: Callable[..., Any], payload: str) -> str:
    before, after = draw(SURROUNDING), draw(SURROUNDING)
    return f"{before} {payload}\n{after}"


@SETTINGS
@given(st.text(max_size=60), st.text(max_size=60))
def test_the_compact_forms_are_defined_per_character(a: str, b: str) -> None:
    assert compact(a + b) == compact(a) + compact(b)
    assert letters(a + b) == letters(a) + letters(b)


@SETTINGS
@given(st.text(max_size=80), st.booleans())
def test_compact_positions_map_back_to_the_characters_that_made_them(text: str, digits: bool) -> None:
    plain = CompactMap(text, digits=digits)
    via_bytes = CompactMap(text, digits=digits, tokens=ByteText(text))
    one = compact if digits else letters
    for k in range(len(plain.compact)):
        owner = plain.owner(k)
        assert owner == via_bytes.owner(k)
        assert plain.compact[k] in one(text[owner])


@SETTINGS
@given(st.data())
def test_a_written_and_encoded_name_is_always_found(data: st.DataObject) -> None:
    family, given_ = data.draw(names())
    matcher = IdentifierMatcher.build([("PatientName", f"{family}^{given_}")])
    text = written(data.draw, family, given_)
    encode = data.draw(st.sampled_from(ENCODINGS))
    document = embed(data.draw, encode(text))
    assert "PatientName" in {h.attribute for h in matcher.scan(document)}, (text, document)


@st.composite
def dates(draw: st.DrawFn) -> dt.date:
    return draw(st.dates(min_value=dt.date(1920, 1, 1), max_value=dt.date(2020, 12, 31)))


DATE_FORMS: list[Callable[[dt.date], str]] = [
    lambda d: d.strftime("%Y%m%d"),
    lambda d: d.isoformat(),
    lambda d: d.strftime("%d.%m.%Y"),
    lambda d: f"{d.day}.{d.month}.{d.year}",
    lambda d: d.strftime("%m/%d/%Y"),
    lambda d: f"{d.month}/{d.day}/{d.year}",
    lambda d: d.strftime("%d %b %Y"),
    lambda d: d.strftime("%B %d, %Y").upper(),
    lambda d: f"{d.day}. {d.strftime('%B')} {d.year}",
    lambda d: d.strftime("%Y-%b-%d").lower(),
    lambda d: f"{d.isoformat()} 00:00:00",
]


@SETTINGS
@given(st.data())
def test_a_written_and_encoded_birth_date_is_always_found(data: st.DataObject) -> None:
    day = data.draw(dates())
    matcher = IdentifierMatcher.build([("PatientBirthDate", day.strftime("%Y%m%d"))])
    text = data.draw(st.sampled_from(DATE_FORMS))(day)
    document = embed(data.draw, data.draw(st.sampled_from(ENCODINGS))(text))
    assert "PatientBirthDate" in {h.attribute for h in matcher.scan(document)}, (text, document)


@SETTINGS
@given(st.data())
def test_a_written_and_encoded_id_is_always_found(data: st.DataObject) -> None:
    number = data.draw(st.integers(100_000, 99_999_999))
    pid = f"{number:08d}"
    prefix = data.draw(st.sampled_from(["", "KV", "SYN-", "A"]))
    matcher = IdentifierMatcher.build([("PatientID", prefix + pid)])
    forms = [prefix + pid, (prefix + pid).lower()]
    if not prefix:
        forms += [str(number), f"{number}.0", f"MRN:{pid}"]
    text = data.draw(st.sampled_from(forms))
    document = embed(data.draw, data.draw(st.sampled_from(ENCODINGS))(text))
    assert "PatientID" in {h.attribute for h in matcher.scan(document)}, (text, document)


WORDS = [
    "patients",
    "series",
    "studies",
    "mean",
    "sd",
    "ml",
    "HU",
    "CT",
    "MR",
    "lung",
    "volume",
    "n",
    "=",
    "±",
]


@st.composite
def measures_text(draw: st.DrawFn) -> str:
    """Lines of counts and measures as an analysis prints them."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        word = draw(st.sampled_from(WORDS))
        count = draw(st.integers(0, 99_999))
        value = draw(st.floats(-5000, 5000, allow_nan=False))
        digits = draw(st.integers(0, 4))
        year = draw(st.integers(2000, 2025))
        out.append(f"{word} {count} {value:.{digits}f} ({year}) {count / 7:.3g} {value:.2e}")
    return "\n".join(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(measures_text())
def test_counts_and_measures_are_never_identifiers(text: str) -> None:
    assert _BIG.scan(text) == [], text


def _big_matcher() -> IdentifierMatcher:
    rng = random.Random(7)
    values = [("PatientID", f"{rng.randrange(10**8):08d}") for _ in range(20_000)]
    values += [("AccessionNumber", str(rng.randrange(10**9, 10**10))) for _ in range(5_000)]
    values += [
        ("PatientName", "^".join(rng.choice(LATIN[:26]) * 2 + rng.choice(LATIN[:26]) for _ in range(2)))
        for _ in range(2_000)
    ]
    return IdentifierMatcher.build(values)


_BIG = _big_matcher()
