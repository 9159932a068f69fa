"""The CT quality and lung volume notebooks, run as a site's runner runs them.

Each runs once with papermill in the ``jip`` kernel, in the sandbox where this machine
provides it, reading the archive of :mod:`tests.notebooks.conftest` through the data
channel; then its real outputs and records go through the site's output checks under
the default policy (k = 5).  Every count in that archive is at least k, so nothing may
be redacted (the checks only hold the plots for a data steward), and the records must
agree with the archive's manifest and ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from jipkit.config import SiteConfig
from jipkit.data.site import Site
from jipkit.data.synth import write_series
from jipkit.protocol.notebook import parameter_schema
from jipkit.site.disclosure import CheckedResult, IdentifierMatcher, OutputPolicy, check_result
from jipkit.site.execute import Outcome
from tests.notebooks.conftest import NOTEBOOKS, SANDBOX_AVAILABLE, TOLERANCE, Archive, canon, source

pytestmark = pytest.mark.slow
Run = Callable[[str, dict[str, Any]], Outcome]


def _checked(
    outcome: Outcome, name: str, parameters: dict[str, Any], matcher: IdentifierMatcher
) -> CheckedResult:
    assert outcome.status == "succeeded", (outcome.reason, outcome.failed_cell, outcome.exception)
    assert outcome.isolation == ("sandbox" if SANDBOX_AVAILABLE else "none")
    return check_result(
        outcome.outputs,
        outcome.records,
        policy=OutputPolicy(),
        matcher=matcher,
        notebook_source=source(name),
        parameters=parameters,
    )


def _assert_unchanged(result: CheckedResult, outcome: Outcome) -> None:
    """No redaction: records and outputs leave as the notebook made them; only plots wait."""
    assert result.report() == []
    assert result.records == outcome.records
    before = {c["cell"]: c["outputs"] for c in outcome.outputs}
    after = {c["cell"]: c["outputs"] for c in result.outputs}
    assert after.keys() == before.keys()
    for cell, items in before.items():
        for old, new in zip(items, after[cell], strict=True):
            assert new.get("data", new) == old.get("data", old), cell
    images = [o for c in outcome.outputs for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) == 1
    assert [r.reason for r in result.release_reasons] == ["image"]


def _records(result: CheckedResult) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in result.records}


def _table(rec: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(rec["value"]["rows"], columns=rec["value"]["columns"])


def test_both_have_typed_parameters() -> None:
    for name in ("ct_quality", "lung_volume"):
        nb = (NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8")
        schema = parameter_schema(nb)
        assert schema["device"] == {"type": "string", "default": "auto"}
        assert all(p["type"] in ("integer", "number", "string", "array") for p in schema.values())
        params = next(c for c in canon(name)["cells"] if "parameters" in c["tags"])["source"]
        assert all(f"{p}: " in params for p in schema)  # annotated: name: type = default


def test_lung_volumes_come_through_and_match_the_ground_truth(
    outcome_of: Run, archive: Archive, matcher: IdentifierMatcher
) -> None:
    outcome = outcome_of("lung_volume", {})
    result = _checked(outcome, "lung_volume", {}, matcher)
    _assert_unchanged(result, outcome)
    recs = _records(result)
    assert list(recs) == [
        "ct_studies",
        "ct_patients",
        "failed_ct_studies",
        "device",
        "lung_volume_ml",
        "lung_left_ml",
        "lung_right_ml",
        "lung_volume_quartiles",
        "seconds_per_ct_load",
        "seconds_per_ct_segmentation",
    ]
    # the notebook measures one CT per study: the one with the most slices
    truth = archive.truth.sort_values("n_slices", ascending=False).drop_duplicates("StudyInstanceUID")
    assert len(truth) < len(archive.truth)  # some studies hold two reconstructions
    assert recs["ct_studies"]["value"] == len(truth) >= 5
    assert recs["ct_patients"]["value"] == truth.PatientID.nunique() >= 5
    assert recs["failed_ct_studies"]["value"] == 0
    assert recs["device"]["value"] == "cpu"  # the sandbox shows the kernel no GPU
    for name, column in (
        ("lung_volume_ml", "lung_total_ml"),
        ("lung_left_ml", "lung_left_ml"),
        ("lung_right_ml", "lung_right_ml"),
    ):
        rec = recs[name]
        assert rec["n"] == len(truth) and rec["unit"] == "ml"
        assert rec["value"] == pytest.approx(truth[column].mean(), rel=TOLERANCE)
        assert rec["sd"] == pytest.approx(truth[column].std(), rel=0.05)
    quartiles = _table(recs["lung_volume_quartiles"]).set_index("region")
    assert list(quartiles.index) == ["total", "left", "right"]
    assert (quartiles.studies == len(truth)).all()
    want = truth.lung_total_ml.quantile([0.25, 0.5, 0.75]).to_numpy()
    got = quartiles.loc["total", ["q25_ml", "median_ml", "q75_ml"]].to_numpy(dtype=float)
    assert got == pytest.approx(want, rel=TOLERANCE)
    for name in ("seconds_per_ct_load", "seconds_per_ct_segmentation"):
        assert recs[name]["unit"] == "s" and 0 < recs[name]["value"] < 30


def test_the_parameters_take_effect(outcome_of: Run, archive: Archive) -> None:
    first = outcome_of("lung_volume", {"max_studies": 5})
    assert first.status == "succeeded", (first.reason, first.failed_cell)
    recs = {r["name"]: r for r in first.records}
    truth = (
        archive.truth.sort_values(["StudyInstanceUID", "n_slices"], ascending=[True, False])
        .drop_duplicates("StudyInstanceUID")
        .head(5)
    )
    assert recs["ct_studies"]["value"] == recs["lung_volume_ml"]["n"] == 5
    assert recs["lung_volume_ml"]["value"] == pytest.approx(truth.lung_total_ml.mean(), rel=TOLERANCE)
    # lungs (-850 HU) are not below -900 HU: no lung at all
    dense = outcome_of("lung_volume", {"max_studies": 5, "lung_threshold_hu": -900})
    assert {r["name"]: r["value"] for r in dense.records}["lung_volume_ml"] == 0
    quality = outcome_of("ct_quality", {"max_series": 5, "hu_bin_width": 500})
    assert quality.status == "succeeded", (quality.reason, quality.failed_cell)
    recs = {r["name"]: r for r in quality.records}
    assert recs["hu_series"]["value"] == recs["body_hu_mean"]["n"] == 5
    assert [row[:2] for row in recs["hu_histogram_body"]["value"]["rows"]] == [
        [-1000, -500],
        [-500, 0],
        [0, 500],
        [500, 1000],
    ]


def test_ct_quality_comes_through_and_matches_the_archive(
    outcome_of: Run, archive: Archive, matcher: IdentifierMatcher
) -> None:
    outcome = outcome_of("ct_quality", {})
    result = _checked(outcome, "ct_quality", {}, matcher)
    _assert_unchanged(result, outcome)
    recs = _records(result)
    assert list(recs) == [
        "ct_series",
        "ct_patients",
        "slice_thickness_mm",
        "pixel_spacing_mm",
        "scanner_models",
        "hu_series",
        "hu_histogram_body",
        "body_hu_mean",
        "outside_air_hu_mean",
    ]
    ct = archive.manifest[archive.manifest.Modality == "CT"]
    assert recs["ct_series"]["value"] == len(ct)
    assert recs["ct_patients"]["value"] == ct.PatientID.nunique()
    thickness = _table(recs["slice_thickness_mm"]).set_index("slice_thickness_mm").series
    assert thickness.to_dict() == {f"{t:.2f}": n for t, n in ct.SliceThickness.value_counts().items()}
    spacing = _table(recs["pixel_spacing_mm"])
    assert spacing.values.tolist() == [["3.80", len(ct)]]  # 360 mm over 96 columns: 3.75 mm
    scanners = _table(recs["scanner_models"]).set_index("scanner")
    by_model = ct.groupby(ct.Manufacturer + " " + ct.ManufacturerModelName)
    assert scanners.series.to_dict() == by_model.size().to_dict()
    assert (scanners.series >= 5).all()  # so that none was suppressed
    assert scanners.mean_slice_thickness_mm.to_numpy() == pytest.approx(
        by_model.SliceThickness.mean().reindex(scanners.index).to_numpy(), rel=1e-3
    )
    assert scanners.mean_pixel_spacing_mm.tolist() == pytest.approx([3.75] * len(scanners))
    # the HU histogram: the share of lung voxels (-850 HU) among body voxels is known
    hist = _table(recs["hu_histogram_body"])
    assert recs["hu_series"]["value"] == len(ct) and (hist.series == len(ct)).all()
    assert hist.hu_from.tolist() == list(range(-1000, 1000, 100))
    assert hist.fraction.sum() == pytest.approx(1.0, abs=1e-3)
    voxel_ml = ct.SliceThickness * 3.75 * 3.75 / 1000
    lung_share = (ct.lung_total_ml / voxel_ml).sum() / (ct.body_ml / voxel_ml).sum()
    lungs = hist.set_index("hu_from").fraction
    assert lungs[-900] == pytest.approx(lung_share, rel=1e-3)
    assert lungs[-1000] == 0 and lungs[-800:-200].sum() == 0  # nothing between air and fat
    assert -1003 < recs["outside_air_hu_mean"]["value"] < -997
    body_hu = recs["body_hu_mean"]
    assert body_hu["n"] == len(ct) and -300 < body_hu["value"] < 100


@pytest.mark.parametrize(
    ("name", "printed"), [("ct_quality", "HU computed on cpu\n"), ("lung_volume", "computing on cpu\n")]
)
def test_only_records_a_plot_and_a_line_leave(
    outcome_of: Run, archive: Archive, name: str, printed: str
) -> None:
    outcome = outcome_of(name, {})
    items = [o for c in outcome.outputs for o in c["outputs"]]
    streams = "".join(o["text"] for o in items if o["output_type"] == "stream")
    assert streams == printed  # no count below k and no value of one series is printed
    shown = [o for o in items if o["output_type"] != "stream"]
    assert {o["output_type"] for o in shown} == {"display_data"}  # no cell shows its last value
    kinds = [next(m for m in o["data"] if m != "text/plain") for o in shown]
    assert kinds == ["application/vnd.jip.record.v1+json"] * len(outcome.records) + ["image/png"]
    text = repr(outcome.outputs)
    for column in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber"):
        assert not any(str(v) in text for v in archive.manifest[column]), column


def _stderr(outcome: Outcome) -> list[str]:
    """What the run wrote to stderr (kept at the site, in its executed notebook)."""
    nb = json.loads((outcome.run_dir / "executed.ipynb").read_text(encoding="utf-8"))
    return [
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for cell in nb["cells"]
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stderr"
    ]


@pytest.mark.parametrize("name", ["ct_quality", "lung_volume"])
def test_no_warning_on_stderr(outcome_of: Run, name: str) -> None:
    # jipkit.data.site imports tqdm.auto, which warns where ipywidgets is not installed
    # (every notebook that calls jip.connect() shows it); nothing else may be written
    for text in _stderr(outcome_of(name, {})):
        lines = [line for line in text.splitlines() if line.strip()]
        assert all("TqdmWarning" in line or "notebook_tqdm" in line for line in lines), text


def test_a_site_without_ct(runner: Callable[..., Outcome], tmp_path: Path) -> None:
    write_series(tmp_path / "dicom", shape=(4, 16, 16), modality="MR", seed=5)
    config = SiteConfig(name="mr-only", index_path=tmp_path / "index.sqlite", cache_dir=tmp_path / "cache")
    Site(config).index_paths([tmp_path / "dicom"], progress=False)
    found = {}
    for name in ("ct_quality", "lung_volume"):
        outcome = runner(name, {}, data=Site(config), protected=tmp_path)
        assert outcome.status == "succeeded", (name, outcome.failed_cell, outcome.exception)
        assert not any("image/png" in o.get("data", {}) for c in outcome.outputs for o in c["outputs"])
        found.update({r["name"]: r["value"] for r in outcome.records})
    assert found == {
        "ct_series": 0,
        "ct_patients": 0,
        "slice_thickness_mm": {"columns": ["slice_thickness_mm", "series"], "rows": []},
        "pixel_spacing_mm": {"columns": ["pixel_spacing_mm", "series"], "rows": []},
        "scanner_models": {
            "columns": ["scanner", "series", "mean_slice_thickness_mm", "mean_pixel_spacing_mm"],
            "rows": [],
        },
        "hu_series": 0,
        "ct_studies": 0,
        "failed_ct_studies": 0,
        "device": "cpu",
    }
