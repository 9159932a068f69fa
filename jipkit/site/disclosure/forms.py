"""The written forms of identifying values: what a leak of each value can look like.

Each value of an identifying attribute becomes keys of three kinds (see
:class:`Forms`):

``words``
    Compact forms (:func:`jipkit.site.disclosure.normalize.compact`) that contain a
    letter: person names in every order of their components, with initials, with German
    transliterations (``ü`` as ``ue``), each group (alphabetic, ideographic, phonetic)
    on its own; alphanumeric IDs; institution names.  (Birth dates written with month
    names are read by :mod:`jipkit.site.disclosure.dates`.)
``digits``
    Runs of digits matched as a whole run (never inside a longer one, never the decimals
    of a number): numeric IDs (and their value without leading zeros, as ``int()``
    prints it), accession numbers, UIDs with the dots removed, birth dates as
    ``YYYYMMDD``, ``DDMMYYYY`` and ``MMDDYYYY``.
``punct``
    Tokens of digits with ``.``, ``/`` or ``-`` matched as a whole token: UIDs as
    written, birth dates as ``1980-01-02``, ``02.01.1980``, ``2.1.1980``, ``01/02/1980``,
    ``1/2/1980`` and the like, IDs written with separators.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from jipkit.site.disclosure.normalize import compact, weight

__all__ = ["ATTRIBUTE_KINDS", "Forms", "forms_of"]

Kind = Literal["name", "id", "date", "uid", "text"]

#: Identifying attributes of the index and how each is written.
ATTRIBUTE_KINDS: Final[dict[str, Kind]] = {
    "PatientName": "name",
    "PatientID": "id",
    "OtherPatientIDs": "id",
    "PatientBirthDate": "date",
    "AccessionNumber": "id",
    "ReferringPhysicianName": "name",
    "InstitutionName": "text",
    "StudyInstanceUID": "uid",
    "SeriesInstanceUID": "uid",
    "SOPInstanceUID": "uid",
    "FrameOfReferenceUID": "uid",
}

_TRANSLIT: Final = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "å": "aa"}
)
_UID: Final = re.compile(r"^[0-9]+(?:\.[0-9]+)+$")
_PUNCT_ID: Final = re.compile(r"^[0-9]+(?:[./-][0-9]+)+$")
_SPLIT_WORDS: Final = re.compile(r"[\s\-]+")


@dataclass
class Forms:
    """Keys of one or more values, by kind (see the module docstring)."""

    words: set[str] = field(default_factory=set)
    digits: set[str] = field(default_factory=set)
    punct: set[str] = field(default_factory=set)


def _values(raw: str) -> list[str]:
    """The values of a possibly multi-valued DICOM string (``\\`` separates values)."""
    return [v.strip() for v in raw.split("\\") if v.strip()]


def _name_group_forms(group: str) -> set[str]:
    """Compact forms of one component group of a person name (``family^given^middle^...``)."""
    parts = group.split("^")
    family, given, middle = [*parts, "", "", ""][:3]
    out: set[str] = set()
    spellings = [dict.fromkeys((p, p.translate(_TRANSLIT))) for p in (family, given, middle)]
    for fam, giv, mid in itertools.product(*spellings):
        f, g, mi = compact(fam), compact(giv), compact(mid)
        present = [c for c in (f, g, mi) if c]
        if len(present) == 1:
            out.add(present[0])
            continue
        core = [c for c in (f, g) if c]
        out.update("".join(p) for p in itertools.permutations(core or present))
        if mi and core:
            out.update("".join(p) for p in itertools.permutations([*core, mi]))
        if f and g and weight(g) == len(g):  # initials make no sense in ideographic names
            out.update({g[0] + f, f + g[0]})
        first_given = compact(_SPLIT_WORDS.split(giv.strip())[0]) if giv.strip() else ""
        if f and first_given and first_given != g:  # "Marie Dupont" for "Dupont^Marie-Hélène"
            out.update({first_given + f, f + first_given})
    return out


def _name_forms(raw: str) -> set[str]:
    out: set[str] = set()
    for value in _values(raw):
        for group in value.split("="):
            if group.strip("^ "):
                out |= _name_group_forms(group)
    return out


def _date_forms(raw: str, forms: Forms) -> None:
    try:
        d = dt.datetime.strptime(raw.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return
    y, m, dd = f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"
    mm, ds = str(d.month), str(d.day)
    forms.digits |= {y + m + dd, dd + m + y, m + dd + y}
    for sep in "-./":
        forms.punct |= {
            sep.join(p) for p in ((y, m, dd), (dd, m, y), (m, dd, y), (ds, mm, y), (mm, ds, y), (y, mm, ds))
        }


def _id_forms(raw: str, forms: Forms, kind: Kind) -> None:
    for value in _values(raw):
        c = compact(value)
        if not c:
            continue
        if c.isdigit() and c.isascii():
            forms.digits.add(c)
            if c.lstrip("0"):
                forms.digits.add(c.lstrip("0"))
            if value != c and (_PUNCT_ID.match(value) or (kind == "uid" and _UID.match(value))):
                forms.punct.add(value)
        else:
            forms.words.add(c)


def forms_of(kind: Kind, raw: str) -> Forms:
    """The written forms of one value of an identifying attribute.

    Parameters
    ----------
    kind : {"name", "id", "date", "uid", "text"}
        How the attribute is written (:data:`ATTRIBUTE_KINDS`).
    raw : str
        The value as the index holds it (DICOM: ``^`` between name components, ``=``
        between name groups, ``\\`` between values, dates as ``YYYYMMDD``).

    Returns
    -------
    Forms
        Before any minimum length is applied.

    Examples
    --------
    >>> forms = forms_of("name", "Müller^Jürgen")
    >>> sorted(w for w in forms.words if w.startswith("j"))
    ['jmueller', 'jmuller', 'juergenmueller', 'juergenmuller', 'jurgenmueller', 'jurgenmuller']
    """
    forms = Forms()
    if kind == "name":
        forms.words |= _name_forms(raw)
    elif kind == "date":
        _date_forms(raw, forms)
    elif kind in ("id", "uid"):
        _id_forms(raw, forms, kind)
    else:
        for value in _values(raw):
            for spelling in {value, value.translate(_TRANSLIT)}:
                c = compact(spelling)
                if c:
                    (forms.digits if c.isdigit() and c.isascii() else forms.words).add(c)
    return forms
