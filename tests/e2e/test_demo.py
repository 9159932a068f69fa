"""The main job end to end: `jip demo` runs a coordinator and three sites on loopback.

All three shipped notebooks (cohort overview, CT quality, lung volumes) run at the three
sites; the lung volumes must match the ground truth each site's archive keeps beside its
data (``<workdir>/<site>/archive/ground_truth.csv``) within 2 %, per site and pooled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from jipkit.protocol.notebook import version_hash

JIP = [sys.executable, "-m", "jipkit.cli"]
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JIP_")}


def _processes_under(folder: Path) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(folder) in line and "ps -eo" not in line]


def _truth(work: Path, site: str) -> pd.DataFrame:
    """The CTs the lung volume notebook measures at ``site``: the thinnest of each study."""
    truth = pd.read_csv(work / site / "archive" / "ground_truth.csv")
    return truth.sort_values("n_slices", ascending=False).drop_duplicates("StudyInstanceUID")


def test_demo_runs_the_federation_and_exits(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [*JIP, "demo", "--exit-when-done", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("enrolled with a one-time token") == 3
    assert out.count("site-a: succeeded  site-b: succeeded  site-c: succeeded") == 3  # three notebooks
    # what came back: per notebook, a result from each site
    db = work / "coordinator" / "data" / "coordinator.sqlite"
    with sqlite3.connect(db) as con:
        docs = [json.loads(r[0]) for r in con.execute("SELECT document FROM results")]
    assert len(docs) == 9 and {d["status"] for d in docs} == {"succeeded"}
    versions = {
        version_hash((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8")): name
        for name in ("cohort_overview", "ct_quality", "lung_volume")
    }
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in versions.values()}
    for d in docs:
        results[versions[d["version_hash"]]][d["site"]] = d
    assert all(set(r) == {"site-a", "site-b", "site-c"} for r in results.values())
    values = {
        name: {site: {r["name"]: r for r in d["records"]} for site, d in r.items()}
        for name, r in results.items()
    }
    # the cohort overview: per-site counts, and their pooled total
    cohort = {
        site: {k: r["value"] for k, r in recs.items()} for site, recs in values["cohort_overview"].items()
    }
    totals = sum(v["series"] for v in cohort.values())
    assert all(v["series"] == v["series_CT"] + v["series_MR"] for v in cohort.values())
    combined = next(line for line in out.splitlines() if line.strip().startswith("series count"))
    assert str(totals) in combined.split()
    # the CT quality check agrees with the cohort overview, and its plot was released
    for site, recs in values["ct_quality"].items():
        assert recs["ct_series"]["value"] == recs["hu_series"]["value"] == cohort[site]["series_CT"]
        assert {"slice_thickness_mm", "pixel_spacing_mm", "scanner_models", "hu_histogram_body"} <= set(recs)
        assert recs["outside_air_hu_mean"]["value"] == pytest.approx(-1000, abs=3)
    # the lung volumes: per site and pooled, within 2 % of the archives' ground truth
    n_all, sum_all, truth_all = 0, 0.0, []
    for site, recs in values["lung_volume"].items():
        truth = _truth(work, site)
        lungs = recs["lung_volume_ml"]
        assert recs["ct_studies"]["value"] == lungs["n"] == len(truth) >= 5
        assert lungs["value"] == pytest.approx(truth.lung_total_ml.mean(), rel=0.02)
        n_all += lungs["n"]
        sum_all += lungs["n"] * lungs["value"]
        truth_all.append(truth)
    pooled = pd.concat(truth_all).lung_total_ml.mean()
    assert sum_all / n_all == pytest.approx(pooled, rel=0.02)
    line = next(line for line in out.splitlines() if line.strip().startswith("lung_volume_ml measure"))
    assert float(line.split()[2]) == pytest.approx(pooled, rel=0.02)
    # results with a plot waited for the site's data steward, who released them
    for name in ("ct_quality", "lung_volume"):
        for d in results[name].values():
            assert d["release"]["decision"] == "approved", d["release"]
            assert any("image/png" in o.get("data", {}) for c in d["outputs"] for o in c["outputs"])
    assert out.count("erin looked at it and released it") == 6
    # only outputs and records left the sites: no notebook source, no file paths
    for d in docs:
        text = json.dumps(d)
        assert "find_series" not in text and "import jipkit" not in text
        assert str(work) not in text
    assert not _processes_under(work)  # everything the demo started has stopped


def test_demo_keeps_running_until_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [*JIP, "demo", "--no-pacs", "--patients", "2", "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        running = _processes_under(work)
        assert len(running) == 5, running  # the demo, the coordinator and three runners
        ui = re.search(r"the dashboard at (\S+/ui/)", "".join(lines))
        assert ui, "".join(lines)
        page = httpx.get(ui.group(1), follow_redirects=True, timeout=10)
        assert page.status_code == 200 and "password" in page.text.lower()
        assert "default-src 'none'" in page.headers["content-security-policy"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Stopped." in rest
        assert not _processes_under(work)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
