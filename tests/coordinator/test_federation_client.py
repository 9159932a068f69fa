"""``jip.Coordinator`` against the real coordinator (a process), with simulated sites.

The pooled figures are checked against figures computed here from the sites' raw
numbers; a suppressed value must come back missing (NaN), never 0.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jipkit as jip
from jipkit.federation import RunResults, job_label
from tests.coordinator._helpers import ROOT, World, count, make_notebook, measure

RAW = {"a": [510.0, 530.0, 490.0, 560.0, 505.0], "b": [600.0, 640.0, 620.0, 610.0, 655.0, 615.0]}


def _fed(world: World, role: str) -> jip.Coordinator:
    return jip.Coordinator(world.coord.url, world.tokens[role])


def test_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIP_COORDINATOR_URL", raising=False)
    with pytest.raises(jip.CoordinatorError, match="JIP_COORDINATOR_URL"):
        jip.Coordinator()


def test_studies_versions_submit_review(world: World) -> None:
    with _fed(world, "scientist") as fed:
        studies = fed.studies()
        assert list(studies.name) == [world.study]
        assert studies.roles.iloc[0] == "scientist"
        vh = fed.submit(world.study, make_notebook(body="z = 3  # jip.Coordinator"))
        assert (
            fed.submit(world.study, make_notebook(body="z = 3  # jip.Coordinator")) == vh
        )  # same notebook, same version
        versions = fed.versions(world.study).set_index("version_hash")
        assert versions.at[vh, "state"] == "pending" and versions.at[vh, "author"] == "alice"
        assert versions.at[world.version_hash, "state"] == "approved"
        with pytest.raises(jip.CoordinatorError, match="review") as err:
            fed.review(vh, approve=True)  # a scientist is no reviewer
        assert err.value.status == 403
    with _fed(world, "reviewer") as fed:
        out = fed.review(vh, approve=False, comment="needs a parameters cell description")
        assert out["state"] in ("pending", "rejected")
        assert fed.notebook(vh)["reviews"][0]["comment"] == "needs a parameters cell description"
    with _fed(world, "outsider") as fed:
        assert fed.studies().empty
        with pytest.raises(jip.CoordinatorError) as err:
            fed.versions(world.study)
        assert err.value.status == 403


def _site_answers(world: World, sites: list, delay: float) -> threading.Thread:
    """Sites that answer after ``delay``: a has a suppressed count, b a full result."""
    a, b = sites

    def answer() -> None:
        time.sleep(delay)
        for site, raw, n_patients in ((a, RAW["a"], None), (b, RAW["b"], 6)):
            env = site.claim()
            records = [
                count("patients", n_patients, of="patients"),
                measure("lung_ml", float(np.mean(raw)), len(raw), float(np.std(raw, ddof=1))),
                {
                    "schema": "jip.record/1",
                    "name": "by_year",
                    "kind": "table",
                    "value": {"columns": ["year", "series"], "rows": [["2020", None if site is a else 7]]},
                    "of": "series",
                    "count_columns": ["series"],
                },
            ]
            report = [{"rule": "k_suppression", "place": {"record": 0, "name": "patients"}, "count": 1}]
            doc = site.result(
                env,
                records=records,
                extra={"isolation": "sandbox", "redactions": report if site is a else []},
            )
            assert site.post(env["job_id"], doc).status_code == 200

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return t


def test_run_wait_and_pooled_figures(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    sites = world.new_sites(2)
    with _fed(world, "coordinator") as fed:
        run = fed.run(world.study, world.version_hash, {"threshold": -400}, sites=[s.name for s in sites])
        assert set(run.status().status) == {"queued"}
        answering = _site_answers(world, sites, delay=0.5)
        res = run.wait(timeout=60)
        answering.join()
        progress = capsys.readouterr()
        assert sites[0].name not in progress.out  # progress bars go to stderr, per site
        assert sites[0].name in progress.err and sites[1].name in progress.err and "done" in progress.err
        assert isinstance(res, RunResults) and res.state == "done"
        assert set(run.status().status) == {"done"}
        assert fed.runs(world.study).run_id.iloc[0] == run.run_id  # newest first
    a, b = (s.name for s in sites)
    # suppressed: missing, never 0, and the pooled total says which site is missing
    assert math.isnan(res.records.at[a, "patients"]) and res.records.at[b, "patients"] == 6
    assert res.pooled.at["patients", "total"] == 6 and res.pooled.at["patients", "missing_sites"] == a
    # pooled mean and sd equal those of all raw values put together
    everything = RAW["a"] + RAW["b"]
    assert res.pooled.at["lung_ml", "mean"] == pytest.approx(np.mean(everything))
    assert res.pooled.at["lung_ml", "sd"] == pytest.approx(np.std(everything, ddof=1))
    assert res.pooled.at["lung_ml", "n"] == len(everything)
    # tables from every site, suppressed cells as NaN
    table = res.table("by_year")
    assert list(table.site) == [a, b] and math.isnan(table.series.iloc[0]) and table.series.iloc[1] == 7
    with pytest.raises(KeyError, match="by_year"):
        res.table("nope")
    assert res.sites.loc[a, "isolation"] == "sandbox" and res.sites.loc[a, "redactions"] == 1
    assert res.redactions.to_dict("records") == [
        {"site": a, "rule": "k_suppression", "place": "record 0, name patients", "count": 1, "detail": None}
    ]
    fig = res.plot()
    assert len(fig.axes) == 2  # patients and lung_ml; the table is not a bar
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_wait_times_out_with_what_to_do(world: World) -> None:
    (site,) = world.new_sites(1)
    with _fed(world, "coordinator") as fed:
        run = fed.run(world.study, world.version_hash, sites=[site.name])
        with pytest.raises(jip.CoordinatorError, match="call wait\\(\\) again later") as err:
            run.wait(timeout=0.3, progress=False)
        assert err.value.reason == "wait_timeout"
        run.cancel()
        assert set(run.status().status) == {"cancelled"}
        assert fed.get_run(run.run_id).results().state == "cancelled"


def test_job_labels() -> None:
    assert job_label({"state": "held"}) == "held at site"
    assert job_label({"state": "failed", "reason": "kernel_died"}) == "failed (kernel_died)"
    assert job_label({"state": "succeeded", "reason": None}) == "done"


def test_unreachable_coordinator_says_so() -> None:
    fed = jip.Coordinator("http://127.0.0.1:9", "t")
    with pytest.raises(jip.CoordinatorError, match="Cannot reach the coordinator") as err:
        fed.studies()
    assert err.value.reason == "coordinator_unreachable"


def test_results_frame_keeps_a_site_without_answer() -> None:
    res = RunResults.from_api(
        {
            "run_id": "r",
            "study": "s",
            "version_hash": "v",
            "state": "running",
            "sites": [
                {"site": "x", "state": "queued", "records": []},
                {"site": "y", "state": "succeeded", "records": [count("n", 5)]},
            ],
            "combined": [
                {
                    "name": "n",
                    "kind": "count",
                    "unit": None,
                    "of": "series",
                    "pooled": {"total": 5},
                    "sites": 1,
                    "missing": 1,
                    "missing_sites": ["x"],
                },
            ],
        }
    )
    assert list(res.records.index) == ["x", "y"] and math.isnan(res.records.at["x", "n"])
    assert res.sites.at["x", "status"] == "queued"
    assert isinstance(res.pooled, pd.DataFrame) and res.pooled.at["n", "missing_sites"] == "x"


def test_the_coordinators_notebook_runs_in_a_kernel(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notebooks/coordinator/pooled_results.ipynb through papermill, against the real coordinator."""
    import papermill

    sites = world.new_sites(2)
    monkeypatch.setenv("JIP_COORDINATOR_URL", world.coord.url)
    monkeypatch.setenv("JIP_COORDINATOR_TOKEN", world.tokens["coordinator"])
    answering = _site_answers(world, sites, delay=2.0)  # once the kernel has started the run
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "coordinator" / "pooled_results.ipynb"),
        str(out),
        parameters={
            "study": world.study,
            "version": world.version_hash[:12],
            "sites": [s.name for s in sites],
        },
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    answering.join()
    nb = json.loads(out.read_text(encoding="utf-8"))
    text = "\n".join(
        "".join(o.get("text", "")) + "".join((o.get("data") or {}).get("text/plain", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
    )
    assert f"version {world.version_hash[:12]}" in text
    pooled = next(c for c in nb["cells"] if "".join(c["source"]) == "results.pooled")
    shown = "".join(pooled["outputs"][0]["data"]["text/plain"])
    assert "lung_ml" in shown and f"{np.mean(RAW['a'] + RAW['b']):.1f}"[:5] in shown
    assert any("image/png" in (o.get("data") or {}) for c in nb["cells"] for o in c.get("outputs", []))
