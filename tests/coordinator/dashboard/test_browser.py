"""The dashboard in headless Chromium (Playwright, Debian's /usr/bin/chromium) against the
real coordinator process and a real site runner.

A reviewer logs in and approves a version after reading it and its diff; a coordinator
starts a run of it on two sites (one a real :class:`~jipkit.site.runner.Runner` running
the notebook on a kernel, one simulated), watches it finish, reads the results and
downloads the CSV.  Screenshots of each page go to the ``artifacts`` folder.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jipkit.config import SiteConfig
from tests.coordinator._helpers import ROOT, count, measure
from tests.coordinator.dashboard._browser import login, shot
from tests.coordinator.dashboard._web import Dash, notebook, post_result, provenance, unique

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``jip`` kernelspec made from the repository's template (as kernels/install.sh does)."""
    root = tmp_path_factory.mktemp("kernels")
    spec = (ROOT / "kernels" / "jip" / "kernel.json").read_text(encoding="utf-8")
    (root / "jip").mkdir()
    (root / "jip" / "kernel.json").write_text(spec.replace("@VENV_PYTHON@", sys.executable), encoding="utf-8")
    return root


@pytest.fixture
def real_site(dash: Dash, tmp_path: Path, kernel_dir: Path) -> Iterator[SiteConfig]:
    """A site enrolled in the dashboard's study whose runner serves jobs in a thread."""
    from jipkit.site.runner import Runner
    from tests.site.conftest import SANDBOX_AVAILABLE, enrol_new_site

    cfg, _ = enrol_new_site(
        dash.world,
        tmp_path,
        kernel_dir,
        unique("real"),
        dash.study,
        {"allow_unisolated": not SANDBOX_AVAILABLE},
    )
    runner = Runner(cfg)
    thread = threading.Thread(target=runner.run, name="dashboard-test-runner", daemon=True)
    thread.start()
    try:
        yield cfg
    finally:
        runner.stop()
        thread.join(timeout=30)
        runner.close()
        assert not thread.is_alive(), "the runner did not stop"


def test_review_run_and_results_in_the_browser(
    dash: Dash, browser: Any, artifacts: Path, real_site: SiteConfig
) -> None:
    base = dash.coord.url
    title = unique("Cohort overview")
    first = dash.submit(notebook(title, scale=1.0))
    vh = dash.submit(notebook(title, scale=2.0))
    sim = dash.new_sites(1)[0]

    # A reviewer reads the version (rendered notebook, parameters, diff) and approves it.
    bob = browser.new_context(viewport={"width": 1280, "height": 900})
    page = bob.new_page()
    page.goto(f"{base}/ui/")
    login(page, base, "reviewer", artifacts)
    shot(page, artifacts / "02-studies.png")
    page.click(f"text={dash.study}")
    page.wait_for_selector("#versions")
    shot(page, artifacts / "03-study.png")
    page.click(f'a[href="/ui/versions/{vh}"]')
    frame = page.frame_locator("#notebook-frame")
    frame.get_by_text("scale = 2.0").wait_for()
    assert 'jip.record("rare_findings", 3' in frame.locator("body").inner_text()
    diff = page.inner_text("#diff")
    assert "-| scale = 1.0" in diff and "+| scale = 2.0" in diff and f"version {first[:12]}" in diff
    assert page.inner_text("#parameters").split() == [
        "Name",
        "Type",
        "Default",
        "threshold",
        "integer",
        "-500",
        "scale",
        "number",
        "2.0",
    ]
    assert "2 more approvals needed" in page.inner_text("#review-tally")
    shot(page, artifacts / "04-version.png")
    page.fill("textarea[name=comment]", "Checked the records and the suppression of small counts.")
    page.click("button[value=approve]")
    page.wait_for_selector(".flash")
    assert page.inner_text(".flash") == "Your approval is recorded."
    assert "1 more approval needed" in page.inner_text("#review-tally")
    shot(page, artifacts / "05-reviewed.png")
    bob.close()
    assert dash.review(vh, "reviewer2").status_code == 200  # the second approval, over the API

    # A coordinator starts a run on two sites and watches it finish.
    dave = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = dave.new_page()
    page.goto(f"{base}/ui/versions/{vh}#start-run")  # to the login, and back
    login(page, base, "coordinator")
    assert page.inner_text("#version-state") == "approved"
    for box in page.locator("input[name=sites]").all():
        box.set_checked(box.get_attribute("value") in (real_site.name, sim.name))
    page.fill("textarea[name=parameters]", json.dumps({"threshold": -400, "scale": 2.0}))
    shot(page, artifacts / "06-start-run.png")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#status[data-live=true]")  # the live status script runs
    assert page.inner_text(".flash") == "The run is started: each site's job is queued."
    shot(page, artifacts / "07-run-live.png")
    run_id = page.url.split("/ui/runs/")[1].split("?")[0]
    params = {"threshold": -400, "scale": 2.0}
    post_result(
        sim,
        sim.claim(),
        records=[
            count("patients", 30, "patients"),
            count("rare_findings", 8, "patients"),
            measure("volume_mean", 9800.0, 30, 90.0),
        ],
        extra={"provenance": provenance(vh, params), "isolation": "sandbox", "redactions": []},
    )
    page.wait_for_selector(f'tr[data-site="{sim.name}"] .done', timeout=10_000)  # updated in place
    page.wait_for_selector("#per-site", timeout=90_000)  # every job final: the page reloads with results
    assert page.inner_text("#run-state") == "done"

    # The results: per site and combined, suppressed shown as such, plots, provenance, outputs.
    per_site = {
        row.locator("td").first.inner_text(): [c.inner_text() for c in row.locator("td").all()]
        for row in page.locator("#per-site tbody tr").all()
    }
    assert per_site[real_site.name][:3] == [real_site.name, "done", "42"]
    assert per_site[real_site.name][3] == "suppressed"  # 3 < k = 5 at the site: not 0, not blank
    assert per_site[real_site.name][4].startswith("9400 ml (n 42")
    assert per_site[sim.name][1:4] == ["done", "30", "8"]
    combined = {
        row.locator("td").first.inner_text(): [c.inner_text() for c in row.locator("td").all()]
        for row in page.locator("#combined tbody tr").all()
    }
    assert combined["patients"][2] == "72"
    assert combined["rare_findings"][2:6] == ["8", "total of patients", "1", real_site.name]
    for img in page.locator(".plots img").all():
        img.scroll_into_view_if_needed()
        page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img.element_handle())
    real = page.locator(f'section.site[data-site="{real_site.name}"]')
    assert "verified against the site's pinned key" in real.inner_text()
    assert "(this run's version)" in real.inner_text() and "(the run's parameters)" in real.inner_text()
    assert "k_suppression" in real.locator("table.redactions").inner_text()
    outputs = page.frame_locator(f'section.site[data-site="{real_site.name}"] iframe.outputs')
    outputs.locator("b", has_text="summary").wait_for()
    assert "threshold -400, scale 2.0" in outputs.locator("body").inner_text()
    shot(page, artifacts / "08-results.png")

    # The CSV download.
    with page.expect_download() as download:
        page.click("#csv-records")
    saved = artifacts / "records.csv"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{run_id}-records.csv"
    rows = {(r["site"], r["name"]): r for r in csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8")))}
    assert (
        rows[real_site.name, "rare_findings"]["value"],
        rows[real_site.name, "rare_findings"]["suppressed"],
    ) == (
        "",
        "true",
    )
    assert rows[real_site.name, "patients"]["value"] == "42"
    assert rows[sim.name, "rare_findings"]["value"] == "8"
    assert float(rows[real_site.name, "volume_mean"]["value"]) == 9400.0
    dave.close()
