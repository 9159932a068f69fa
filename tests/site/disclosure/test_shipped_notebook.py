"""The shipped vetted notebook comes through the checks with no false redaction.

``notebooks/cohort_overview.ipynb`` runs with papermill (through the runner's
:func:`~jipkit.site.execute.run_notebook`, on the ``python3`` kernel, ``JIP_CONFIG``
pointing at the test site's ``site.toml``) against the index of a synthetic archive whose
counts are all at least k; its real outputs and records are then checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jipkit.protocol.notebook import canonical_notebook
from jipkit.protocol.records import RECORD_MIME
from jipkit.site.disclosure import IdentifierMatcher, OutputPolicy, check_result
from jipkit.site.execute import Outcome, run_notebook
from tests.site.disclosure.conftest import Archive

ROOT = Path(__file__).resolve().parents[3]
PARAMETERS = {"modalities": ["CT", "MR"], "first_year": 2000, "last_year": 2100}


def _source(canon: dict[str, Any]) -> str:
    return "\n\n".join(c["source"] for c in canon["cells"] if c["cell_type"] == "code")


@pytest.fixture(scope="module")
def canon() -> dict[str, Any]:
    return canonical_notebook((ROOT / "notebooks" / "cohort_overview.ipynb").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def outcome(canon: dict[str, Any], archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    out = run_notebook(
        canon,
        PARAMETERS,
        workdir=tmp_path_factory.mktemp("runs"),
        deadline_s=120,
        kernel_name="python3",
        extra_env={"JIP_CONFIG": str(archive.config)},
        label="cohort-overview",
    )
    assert out.status == "succeeded", (out.reason, out.failed_cell, out.exception)
    return out


def test_the_cohort_overview_comes_through_unchanged(
    outcome: Outcome, canon: dict[str, Any], matcher: IdentifierMatcher
) -> None:
    result = check_result(
        outcome.outputs,
        outcome.records,
        policy=OutputPolicy(),
        matcher=matcher,
        notebook_source=_source(canon),
        parameters=PARAMETERS,
    )
    assert result.report() == []
    assert [r["name"] for r in result.records] == [
        "patients",
        "studies",
        "series",
        "series_CT",
        "series_MR",
        "series_by_modality_bodypart_year",
    ]
    assert result.records == outcome.records
    table = result.records[-1]["value"]
    assert all(row[-1] >= 5 for row in table["rows"])  # the archive is large enough for k = 5
    before = {c["cell"]: c["outputs"] for c in outcome.outputs}
    after = {c["cell"]: c["outputs"] for c in result.outputs}
    assert after.keys() == before.keys()
    for cell, items in before.items():
        for old, new in zip(items, after[cell], strict=True):
            if "data" in old:
                assert new["data"] == old["data"], cell  # HTML, text, the plot, the records
            else:
                assert new == old, cell
    # a plot would wait for a data steward, as every image does by default (the runner's
    # kernel draws with the "agg" backend: plt.show() shows nothing)
    images = [o for c in outcome.outputs for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert [r.reason for r in result.release_reasons] == ["image"] * len(images)


def test_with_a_higher_k_the_displayed_table_hides_what_its_record_suppresses(
    outcome: Outcome, canon: dict[str, Any], matcher: IdentifierMatcher
) -> None:
    counts = [row[-1] for row in outcome.records[-1]["value"]["rows"]]
    k = sorted(counts)[len(counts) // 2] + 1  # half the cells fall below k
    result = check_result(
        outcome.outputs,
        outcome.records,
        policy=OutputPolicy(min_count=k),
        matcher=matcher,
        notebook_source=_source(canon),
        parameters=PARAMETERS,
    )
    assert {r.rule for r in result.redactions} == {
        "k_suppression",
        "secondary_suppression",
        "recorded_table_display",
    }
    table_cell = next(
        c for c in result.outputs if any("text/html" in o.get("data", {}) for o in c["outputs"])
    )
    shown = json.dumps(table_cell["outputs"])
    assert "suppressed" in shown
    small = {str(v) for v in counts if v < k}
    recorded = next(o for o in table_cell["outputs"] if RECORD_MIME in o.get("data", {}))
    assert all(row[-1] is None or row[-1] >= k for row in recorded["data"][RECORD_MIME]["value"]["rows"])
    plain = next(o for o in table_cell["outputs"] if "text/html" in o.get("data", {}))["data"]["text/plain"]
    assert not any(line.split()[-1] in small for line in plain.splitlines()[1:])
