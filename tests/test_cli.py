"""The `jip` command line, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jipkit.data.synth import write_series

JIP = str(Path(sys.executable).parent / "jip")


def jip(*args: str, config: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIP_")}
    if config is not None:
        env["JIP_CONFIG"] = str(config)
    proc = subprocess.run([JIP, "-q", *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "site.toml"
    cfg.write_text('name = "cli"\nindex_path = "index.sqlite"\ncache_dir = "cache"\n')
    return cfg


def test_index_query_load(tmp_path: Path, config: Path) -> None:
    ct = write_series(tmp_path / "data" / "ct", shape=(6, 16, 16), patient={"PatientName": "Núñez^José"})
    mr = write_series(tmp_path / "data" / "mr", shape=(4, 16, 16), modality="MR", seed=1)
    (tmp_path / "data" / "junk.dcm").write_bytes(b"not dicom at all")
    out = jip("index", str(tmp_path / "data"), config=config)
    assert "10 added" in out.stdout and "1 not indexed" in out.stdout
    assert "junk.dcm" in out.stderr and "not_dicom" in out.stderr

    rows = json.loads(jip("query", "series", "Modality=CT", "--format", "json", config=config).stdout)
    assert [r["SeriesInstanceUID"] for r in rows] == [ct.series_uid]
    assert rows[0]["PatientName"] == "Núñez^José" and rows[0]["NumberOfSeriesRelatedInstances"] == 6

    csv = jip("query", "series", "Modality=CT,MR", "--format", "csv", "--columns", "Modality", config=config)
    assert sorted(csv.stdout.split()) == ["CT", "MR", "Modality"]
    table = jip("query", "patient", "PatientName=núñez*", config=config).stdout
    assert "Núñez^José" in table

    loaded = jip("load", mr.series_uid, config=config).stdout
    assert "<Volume MR 4x16x16" in loaded

    errors = jip("errors", "--format", "csv", config=config).stdout
    assert "junk.dcm" in errors


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["query", "series", "Modalty=CT"], "Did you mean Modality"),
        (["query", "series", "StudyDate=2020-13"], "expected a date"),
        (["query", "series", "Modality"], "KEYWORD=VALUE"),
        (["load", "1.2.3.4"], "No series 1.2.3.4"),
        (["sync"], "No PACS source configured"),
    ],
)
def test_errors_are_messages_not_tracebacks(config: Path, args: list[str], fragment: str) -> None:
    proc = jip(*args, config=config, check=False)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('workers = "many"\n')
    proc = jip("config", config=bad, check=False)
    assert proc.returncode == 2 and "workers" in proc.stderr and "Traceback" not in proc.stderr


def test_config_shows_defaults_without_file(tmp_path: Path) -> None:
    out = jip("config").stdout
    assert "embedded defaults" in out and '"name": "local"' in out
