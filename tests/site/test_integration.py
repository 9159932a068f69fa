"""The runner against the real coordinator over HTTP (``jip coordinator serve`` in a subprocess).

Enrolment with a one-time token and a checked fingerprint, a run executed on a real
kernel and its result and records seen by the coordinator, a refusal with its reason, a
failure whose message stays at the site, and a runner killed with SIGKILL mid-job whose
job is leased again and ends with exactly one result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jipkit.config import SiteConfig
from jipkit.site.runner import Runner
from tests.coordinator._helpers import (
    ROOT,
    CoordinatorProcess,
    World,
    clean_env,
    running_coordinator,
    world_on,
)
from tests.site.conftest import NOTEBOOKS, SANDBOX_AVAILABLE, enrol_new_site, processes_with, write_site_toml

STUDY = "lung"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with running_coordinator(tmp_path_factory.mktemp("coordinator"), lease_s=3.0, max_attempts=3) as coord:
        yield coord


@pytest.fixture(scope="module")
def world(coordinator: CoordinatorProcess) -> Iterator[World]:
    with world_on(coordinator, study=STUDY, quorum=2) as w:
        yield w


def approved_version(world: World, name: str) -> str:
    """Submit ``tests/site/notebooks/<name>.ipynb`` to the study and approve it."""
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
    with world.user("scientist") as c:
        r = c.post(f"/studies/{STUDY}/notebooks", json={"notebook": nb})
        assert r.status_code == 200, r.text
        vh = str(r.json()["version_hash"])
    for reviewer in ("reviewer", "reviewer2"):
        with world.user(reviewer) as c:
            r = c.post(f"/notebooks/{vh}/reviews", json={"decision": "approve"})
            assert r.status_code in (200, 409), r.text  # 409: already reviewed by an earlier test
    return vh


def start_run(world: World, vh: str, site: str, parameters: dict[str, Any], deadline_s: int = 60) -> str:
    with world.user("coordinator") as c:
        r = c.post(
            "/runs",
            json={
                "study": STUDY,
                "version_hash": vh,
                "parameters": parameters,
                "sites": [site],
                "deadline_s": deadline_s,
            },
        )
    assert r.status_code == 201, r.text
    return str(r.json()["run_id"])


def results(world: World, run_id: str) -> dict[str, Any]:
    with world.user("scientist") as c:
        r = c.get(f"/runs/{run_id}/results")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


_counter = [0]


def enrolled_site(world: World, tmp_path: Path, kernel_dir: Path, **policy: Any) -> SiteConfig:
    """A new site, registered by the coordinator's admin and enrolled by `enrol` over HTTP."""
    _counter[0] += 1
    name = f"site{_counter[0]}-{os.getpid()}"
    cfg, done = enrol_new_site(
        world, tmp_path, kernel_dir, name, STUDY, {"allow_unisolated": not SANDBOX_AVAILABLE, **policy}
    )
    assert done.pinned == world.svc.public_keys()
    return cfg


def test_a_run_goes_to_the_site_and_only_its_outputs_and_records_come_back(
    world: World, tmp_path: Path, kernel_dir: Path
) -> None:
    cfg = enrolled_site(world, tmp_path, kernel_dir)
    ok, raises = approved_version(world, "ok"), approved_version(world, "raises")
    with Runner(cfg) as runner:
        run_ok = start_run(world, ok, cfg.name, {"threshold": -300, "scale": 2})
        report = runner.run_once(wait_s=5)
        assert report is not None and (report.status, report.delivered) == ("succeeded", True)
        run_bad = start_run(world, raises, cfg.name, {})
        report = runner.run_once(wait_s=5)
        assert report is not None and (report.status, report.reason, report.delivered) == (
            "failed",
            "cell_error",
            True,
        )
    good = results(world, run_ok)
    (entry,) = good["sites"]
    assert (entry["state"], entry["status"]) == ("succeeded", "succeeded")
    assert [r["name"] for r in entry["records"]] == ["patients", "volume_mean"]
    assert {c["cell"] for c in entry["outputs"]} == {2, 3, 4}
    assert "import jipkit" not in json.dumps(entry) and "4712.5 * scale" not in json.dumps(
        entry
    )  # no sources
    bad = results(world, run_bad)
    (entry,) = bad["sites"]
    assert (entry["status"], entry["reason"], entry["failed_cell"], entry["exception"]) == (
        "failed",
        "cell_error",
        3,
        None,
    )
    assert "Müller" not in json.dumps(bad) and "MRN" not in json.dumps(bad)


def test_a_refused_job_shows_its_reason_at_the_coordinator(
    world: World, tmp_path: Path, kernel_dir: Path
) -> None:
    cfg = enrolled_site(world, tmp_path, kernel_dir, local_approval=True)
    vh = approved_version(world, "ok")
    run_id = start_run(world, vh, cfg.name, {})
    with Runner(cfg) as runner:
        report = runner.run_once(wait_s=5)
    assert report is not None and (report.status, report.reason, report.delivered) == (
        "refused",
        "policy_unapproved",
        True,
    )
    (entry,) = results(world, run_id)["sites"]
    assert (entry["state"], entry["reason"]) == ("refused", "policy_unapproved")
    assert (tmp_path / "runs" / "pending-approval" / f"{vh}.ipynb").is_file()


def _runner_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jipkit.site.cli", "--config", str(config), "site", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=clean_env(),
        )


@pytest.mark.slow
def test_a_runner_killed_mid_job_gets_the_job_again_and_it_ends_with_one_result(
    world: World, tmp_path: Path, kernel_dir: Path
) -> None:
    cfg = enrolled_site(world, tmp_path, kernel_dir)
    assert cfg.federation is not None
    config = write_site_toml(tmp_path / "site.toml", cfg.name, cfg.federation, cfg.index_path)
    vh = approved_version(world, "sleeps")
    run_id = start_run(world, vh, cfg.name, {"seconds": 2})
    log = tmp_path / "runner.log"
    first = _runner_process(config, log)
    try:
        if SANDBOX_AVAILABLE:  # the sandbox dies with its runner (bwrap --die-with-parent)
            wait_for(
                lambda: bool(processes_with(b"time.sleep(600)")),
                30,
                f"the first runner never started the notebook: {log.read_text(errors='replace')}",
            )
            kernel = processes_with(b"ipykernel_launcher")[0]  # bwrap and the kernel: one -f
            argv = Path(f"/proc/{kernel}/cmdline").read_bytes().split(b"\0")
            runtime: Path | None = Path(os.fsdecode(argv[argv.index(b"-f") + 1])).parent
            os.kill(first.pid, signal.SIGKILL)  # mid-job: no result, the lease runs out
            first.wait(timeout=10)
            wait_for(lambda: not processes_with(b"time.sleep(600)"), 10, "the sandbox outlived its runner")
        else:
            pid_files: list[Path] = []
            wait_for(
                lambda: bool(pid_files.extend(tmp_path.glob("runs/*/home/child.pid")) or pid_files),
                30,
                f"the first runner never started the notebook: {log.read_text(errors='replace')}",
            )
            os.kill(first.pid, signal.SIGKILL)  # mid-job: no result, the lease runs out
            first.wait(timeout=10)
            home = pid_files[0].parent
            wait_for(lambda: (home / "kernel.pid").exists(), 5, "no kernel pid")
            kernel = int((home / "kernel.pid").read_text())
            try:  # the dead runner's kernel and its runtime folder are orphans now
                argv = Path(f"/proc/{kernel}/cmdline").read_bytes().split(b"\0")
                runtime = Path(os.fsdecode(argv[argv.index(b"-f") + 1])).parent
                os.killpg(kernel, signal.SIGKILL)
            except (OSError, ValueError):
                runtime = None
        if runtime is not None and runtime.name.startswith("jip-rt-"):
            shutil.rmtree(runtime, ignore_errors=True)
        second = _runner_process(config, log)
        try:
            wait_for(
                lambda: results(world, run_id)["state"] == "done",
                40,
                f"the job never finished: {log.read_text(errors='replace')}",
            )
            second.send_signal(signal.SIGTERM)  # graceful stop while it long-polls
            assert second.wait(timeout=10) == 0
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    (entry,) = results(world, run_id)["sites"]
    assert (entry["state"], entry["status"], entry["attempt"]) == ("succeeded", "succeeded", 2)
    assert len(list(tmp_path.glob("runs/*-a1-*"))) == 1 and len(list(tmp_path.glob("runs/*-a2-*"))) == 1
