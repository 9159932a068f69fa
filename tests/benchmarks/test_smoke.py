"""The benchmarks still run: ``python -m tests.benchmarks --quick`` exits 0 and prints its tables.

Timings are not checked (they are never assertions); this only keeps the benchmark
code from rotting while jipkit changes under it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^name\s+figure\s+unit\s+ratio\s+vs\s+target\s+met$", re.MULTILINE)
TITLES = (
    "== load:",
    "== ingest:",
    "== query:",
    "== pacs-query:",
    "== retrieve:",
    "== runner:",
    "== latency:",
    "== coordinator-scale:",
    "== disclosure:",
    "== lungs:",
)


@pytest.mark.slow
def test_benchmarks_run_in_quick_mode(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--no-cold", "--tmp", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-4000:]}"
    for title in TITLES:
        assert title in out, f"no {title!r} table in:\n{out}"
    # load, ingest, both query tables and coordinator-scale always; the Orthanc ones where it is
    # installed, runner and latency where the jip kernel is (kernels/install.sh)
    assert len(HEADER.findall(out)) >= 5, out
    assert "FAILED" not in out, out
    assert list(tmp_path.iterdir()) == [], "the scratch folder was not removed"
