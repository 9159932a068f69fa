"""Query keys: DICOM keywords, checked against pydicom's dictionary and the index."""

from __future__ import annotations

import difflib
from functools import cache

from pydicom.datadict import dictionary_VR, keyword_dict

from jipkit.data.schema import ATTRIBUTES, DERIVED, LEVELS, Level, level_of
from jipkit.errors import UnknownKeywordError

__all__ = ["check_keyword", "vr_of"]

_INDEXED = tuple(k for level in LEVELS for k in (*ATTRIBUTES[level], *DERIVED[level]))


@cache
def vr_of(keyword: str) -> str:
    """The value representation of a DICOM keyword (``"PN"``, ``"DA"``, ...)."""
    try:
        return str(dictionary_VR(keyword))
    except KeyError:
        return "UN"


def check_keyword(keyword: str) -> Level:
    """Return the level that holds ``keyword``; fail loudly, with a suggestion, otherwise.

    Raises
    ------
    UnknownKeywordError
        ``keyword`` is not a DICOM keyword (with the closest ones suggested), or it is
        one the index does not hold (with the list of what it holds).
    """
    level = level_of(keyword)
    if level is not None:
        return level
    if keyword in keyword_dict:
        raise UnknownKeywordError(
            f"{keyword} is a DICOM keyword, but the index does not hold it. Keys the index "
            f"holds: {', '.join(sorted(_INDEXED))}. Query on one of those, then read {keyword} "
            "from the headers of the loaded series (Volume.headers)."
        )
    near = difflib.get_close_matches(keyword, _INDEXED, n=3, cutoff=0.6) or difflib.get_close_matches(
        keyword, list(keyword_dict), n=3, cutoff=0.75
    )
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    raise UnknownKeywordError(
        f"{keyword!r} is not a DICOM keyword.{hint} Query keys are DICOM keywords written "
        "as in the standard, e.g. Modality, StudyDate, SeriesDescription, PatientName."
    )
