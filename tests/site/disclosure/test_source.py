"""Record names must come from the reviewed notebook's code."""

from __future__ import annotations

import pytest

from jipkit.site.disclosure.source import RecordNames

SOURCE = """
%matplotlib inline
import jipkit as jip
jip.record("patients", n, kind="count", of="patients")
for modality in modalities:
    jip.record(f"series_{modality}", 1, kind="count", of="series")
name = "volume_%s" % organ
jip.record("hist_{}_{}".format(a, b), 1)
jip.record(f"{prefix}_total", 2)
organs = ["lung", "liver"]
!ls
"""


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("patients", True),
        ("series_CT", True),  # a parameter value
        ("series_MR", True),
        ("series_PT", False),  # not in the code, not a parameter
        ("series_12345678", False),  # a value from the data
        ("volume_lung", True),  # a literal of the code
        ("volume_kidney", False),
        ("hist_lung_liver", True),
        ("hist_lung_12", False),
        ("s", True),  # literally inside "series": names are checked as substrings of the code
        ("Mueller_total", False),
        ("lung_total", True),
    ],
)
def test_record_names_come_from_the_reviewed_code(name: str, allowed: bool) -> None:
    names = RecordNames(SOURCE, {"modalities": ["CT", "MR"], "threshold": -300})
    assert names.allows(name) is allowed


def test_code_that_does_not_parse_still_yields_templates() -> None:
    names = RecordNames('jip.record(f"series_{m}", 1)\nthis is not python (', {"m": "CT"})
    assert names.allows("series_CT") and not names.allows("series_XX")
