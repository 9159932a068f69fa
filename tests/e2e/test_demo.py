"""The main job end to end: `jip demo` runs a coordinator and three sites on loopback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

JIP = [sys.executable, "-m", "jipkit.cli"]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JIP_")}


def _processes_under(folder: Path) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(folder) in line and "ps -eo" not in line]


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
    assert "site-a: succeeded  site-b: succeeded  site-c: succeeded" in out
    # what came back: per-site counts, and their pooled total
    db = work / "coordinator" / "data" / "coordinator.sqlite"
    with sqlite3.connect(db) as con:
        docs = [json.loads(r[0]) for r in con.execute("SELECT document FROM results")]
    assert len(docs) == 3 and {d["status"] for d in docs} == {"succeeded"}
    per_site = {d["site"]: {r["name"]: r["value"] for r in d["records"]} for d in docs}
    totals = sum(v["series"] for v in per_site.values())
    assert all(v["series"] == v["series_CT"] + v["series_MR"] for v in per_site.values())
    combined = next(line for line in out.splitlines() if line.strip().startswith("series count"))
    assert str(totals) in combined.split()
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
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Stopped." in rest
        assert not _processes_under(work)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
