"""Headless execution on real kernels through papermill: outcomes, what leaves, the watchdog."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jipkit.errors import ConfigError
from jipkit.protocol.notebook import canonical_notebook
from jipkit.site.execute import Outcome, StopFlag, check_kernel, kernel_environment, run_notebook
from tests.site.conftest import load_canon


def run(name: str | dict[str, Any], tmp_path: Path, kernel_dir: Path, **kw: Any) -> Outcome:
    canon = load_canon(name) if isinstance(name, str) else name
    kw.setdefault("deadline_s", 60)
    params = kw.pop("parameters", {})
    return run_notebook(
        canon, params, workdir=tmp_path / "runs", kernel_dirs=[kernel_dir], label="job-1", **kw
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_notebook_runs_with_its_parameters_and_only_outputs_and_records_come_back(
    tmp_path: Path, kernel_dir: Path
) -> None:
    out = run("ok", tmp_path, kernel_dir, parameters={"threshold": -123, "scale": 2})
    assert (out.status, out.reason, out.failed_cell, out.exception) == ("succeeded", None, None, None)
    assert out.kernel == "jip"
    assert [r["name"] for r in out.records] == ["patients", "volume_mean"]
    assert out.records[1]["value"] == 4712.5 * 2
    by_cell = {o["cell"]: o["outputs"] for o in out.outputs}
    assert sorted(by_cell) == [2, 3, 4]  # indices of the canonical notebook (injected cell not counted)
    assert by_cell[2] == [{"output_type": "stream", "name": "stdout", "text": "lung: threshold -123\n"}]
    assert by_cell[4][0]["data"]["text/plain"] == "42"
    text = json.dumps(out.outputs)
    assert "source" not in text and "to stderr" not in text  # no sources, no stderr
    assert (out.run_dir / "executed.ipynb").is_file()  # the site keeps its record


def test_a_cell_that_raises_a_custom_exception_returns_only_status_cell_and_reason(
    tmp_path: Path, kernel_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jipkit.site"):
        out = run("raises", tmp_path, kernel_dir, parameters={"n": 2})
    assert (out.status, out.reason, out.failed_cell, out.exception) == ("failed", "cell_error", 3, None)
    assert out.outputs == [] and out.records == []
    leaving = json.dumps([out.status, out.reason, out.failed_cell, out.exception, out.outputs, out.records])
    assert "Müller" not in leaving and "MRN" not in leaving
    assert "MüllerJürgen" in caplog.text and "MRN 12345" in caplog.text  # the site's log has it


def test_a_builtin_exception_keeps_its_class_name(tmp_path: Path, kernel_dir: Path) -> None:
    out = run("raises_builtin", tmp_path, kernel_dir)
    assert (out.status, out.reason, out.failed_cell, out.exception) == (
        "failed",
        "cell_error",
        2,
        "ValueError",
    )


def test_a_kernel_that_dies_fails_with_kernel_died(tmp_path: Path, kernel_dir: Path) -> None:
    out = run("dies", tmp_path, kernel_dir)
    assert (out.status, out.reason, out.failed_cell, out.exception) == ("failed", "kernel_died", None, None)


def test_past_its_deadline_the_kernels_whole_process_group_is_killed(
    tmp_path: Path, kernel_dir: Path
) -> None:
    t0 = time.monotonic()
    out = run("sleeps", tmp_path, kernel_dir, deadline_s=2.5)
    elapsed = time.monotonic() - t0
    assert (out.status, out.reason) == ("failed", "timeout")
    assert 2.5 <= elapsed < 6
    home = out.run_dir / "home"
    kernel_pid, child_pid = int((home / "kernel.pid").read_text()), int((home / "child.pid").read_text())
    deadline = time.monotonic() + 2
    while (alive(kernel_pid) or alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(kernel_pid) and not alive(child_pid)


def test_a_stop_flag_kills_the_run(tmp_path: Path, kernel_dir: Path) -> None:
    flag = StopFlag()
    threading.Timer(1.5, flag.set, args=("cancelled",)).start()
    t0 = time.monotonic()
    out = run("sleeps", tmp_path, kernel_dir, stop=flag)
    assert (out.status, out.reason) == ("failed", "cancelled")
    assert time.monotonic() - t0 < 5


def test_no_secret_of_the_runner_reaches_the_kernel(
    tmp_path: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIP_PACS_PASSWORD", "s3cr3t-pacs")
    monkeypatch.setenv("JIP_SITE_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-aws")
    monkeypatch.setenv("ALLOWED_EXTRA", "fine")
    out = run(
        "prints_secret",
        tmp_path,
        kernel_dir,
        extra_env={"JIP_CONFIG": str(tmp_path / "site.toml")},
        env_passthrough=["ALLOWED_EXTRA"],
    )
    assert out.status == "succeeded", out
    rec = {r["name"]: r["value"] for r in out.records}
    assert rec["leaked_names"] == 0 and rec["leaked_values"] == 0
    names = set(rec["env"].split())
    assert {"JIP_CONFIG", "ALLOWED_EXTRA", "HOME", "PATH"} <= names
    assert "AWS_SECRET_ACCESS_KEY" not in names and "JIP_PACS_PASSWORD" not in names
    assert rec["cwd"] == str(out.run_dir / "home")


def test_invalid_records_fail_the_run(tmp_path: Path, kernel_dir: Path) -> None:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python"}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": "from IPython.display import display\n"
                "display({'application/vnd.jip.record.v1+json': {'name': 'x'}}, raw=True)",
            }
        ],
    }
    out = run(canonical_notebook(nb), tmp_path, kernel_dir)
    assert (out.status, out.reason) == ("failed", "output_invalid")


def test_the_kernel_environment_is_an_allow_list(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "JIP_PACS_PASSWORD": "x", "HOME": "/root", "SECRET": "y"}
    env = kernel_environment(
        tmp_path / "run", tmp_path / "rt", base=base, extra={"JIP_CONFIG": "/etc/jip/site.toml"}
    )
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert env["HOME"] == str(tmp_path / "run" / "home") and env["JUPYTER_RUNTIME_DIR"] == str(
        tmp_path / "rt"
    )
    assert env["IPYTHONDIR"].startswith(str(tmp_path / "run"))
    assert "SECRET" not in env and "JIP_PACS_PASSWORD" not in env
    with pytest.raises(ConfigError, match="JIP_PACS_PASSWORD"):
        kernel_environment(tmp_path, tmp_path, base=base, passthrough=["JIP_PACS_PASSWORD"])
    with pytest.raises(ConfigError, match="JIP_SITE_TOKEN"):
        kernel_environment(tmp_path, tmp_path, base=base, extra={"JIP_SITE_TOKEN": "t"})


def test_a_missing_kernel_is_a_configuration_error(tmp_path: Path, kernel_dir: Path) -> None:
    assert check_kernel("jip", [kernel_dir]) == kernel_dir / "jip"
    with pytest.raises(ConfigError, match=r"kernels/install\.sh"):
        check_kernel("jip", [tmp_path])


def test_parameters_can_never_become_code() -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    from jipkit.errors import NotebookError
    from jipkit.site.execute import _check_injected

    def nb(source: str) -> Any:
        return new_notebook(cells=[new_code_cell(source, metadata={"tags": ["injected-parameters"]})])

    _check_injected(
        nb('# Parameters\na = "x\\"; import os"\nb = [1, None]\n'), {"a": 'x"; import os', "b": [1, None]}
    )
    for source in ('a = "x"; import os\n', "a = f()\n", 'a = "y"\n', 'a = "x"\nb = 1\n', "a, b = 1, 2\n"):
        with pytest.raises(NotebookError):
            _check_injected(nb(source), {"a": "x"})
