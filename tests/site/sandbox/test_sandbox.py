"""Real kernels in the real sandbox: what a notebook can and cannot reach.

Every run here starts a kernel under bubblewrap as the sandbox user, in a memory cgroup
of its own, and reads the site's data through the runner's data channel.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from jipkit.site.dataserver import HIDDEN_COLUMNS
from jipkit.site.sandbox import SandboxSupport
from tests.site.conftest import processes_with
from tests.site.sandbox.conftest import MEMORY, SCRATCH, Archive, run, sandboxed, stdout_of

pytestmark = sandboxed


def _own_groups(support: SandboxSupport) -> list[Path]:
    assert support.place is not None
    return sorted(support.place.memory.glob(f"jip-{support.tag}-*"))


def test_a_notebook_reads_the_sites_data_through_the_channel_only(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport, archive: Archive
) -> None:
    out = run("reads_data", tmp_path, kernel_dir, support=support, data=archive.site())
    assert (out.status, out.reason, out.isolation) == ("succeeded", None, "sandbox"), out
    got = json.loads(stdout_of(out))
    assert got["site"] == "RemoteSite" and got["sync"] is False
    assert got["patients"] == 1
    local = archive.site().load_series(archive.ct.series_uid)
    assert got["shape"] == list(local.shape) and got["dtype"] == str(local.dtype)
    assert got["sum"] == float(archive.ct.expected.astype("float64").sum())
    assert np.allclose(got["affine"], local.affine)
    assert got["echoes"] == [1, 2]
    assert (got["live"], got["missing"]) == ("refused", "NotFoundError")
    for columns in (got["series_columns"], got["instance_columns"]):  # no paths, no locations
        assert not HIDDEN_COLUMNS & set(columns) and "SeriesInstanceUID" in columns
    assert set(out.series_read) == {archive.ct.series_uid, archive.mr.series_uid}
    assert out.series_read[0] == archive.ct.series_uid  # in the order first read


def test_the_kernel_reaches_no_network_no_secret_and_nothing_outside_its_scratch(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport
) -> None:
    token, key = tmp_path / "site-token", tmp_path / "site-key.pem"
    for path in (token, key, tmp_path / "site.toml", tmp_path / "runner.sqlite", tmp_path / "index.sqlite"):
        path.write_text("secret\n")
        path.chmod(0o600)
    earlier = run("ok", tmp_path, kernel_dir, support=support)  # another run's folder
    assert earlier.status == "succeeded", earlier
    venv = Path(sys.prefix)
    hidden = [
        *(str(p) for p in (token, key, tmp_path / "site.toml", tmp_path / "runner.sqlite")),
        str(tmp_path / "index.sqlite"),
        str(tmp_path / "runs"),
        str(earlier.run_dir / "executed.ipynb"),
        "/root/.bashrc",
        "/root/.local",
        "/etc/shadow",
        "/etc/orthanc",
        "/home",
        "/var",
        "/sys/fs/cgroup",
        "/proc/1/environ",
    ]
    writable = ["/usr/jip-x", "/etc/jip-x", "/jip-x", "/root/jip-x", str(venv / "jip-x"), "/proc/jip-x"]
    marker = f"jip-marker-{uuid.uuid4().hex}"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0)
        out = run(
            "escapes",
            tmp_path,
            kernel_dir,
            support=support,
            parameters={
                "port": listener.getsockname()[1],
                "hidden": json.dumps(hidden),
                "writable": json.dumps(writable),
                "runner_pid": os.getpid(),
                "marker": marker,
                "scratch_bytes": SCRATCH,
            },
        )
        assert out.status == "succeeded", out
        with pytest.raises(BlockingIOError):  # nothing ever connected to it
            listener.accept()
    got = json.loads(stdout_of(out))
    for name in ("tcp", "http", "dns", "udp", "subprocess_tcp"):
        assert got[name][0] == "fail", (name, got[name])
    for p in hidden:
        assert got[f"read:{p}"][0] == "fail", (p, got[f"read:{p}"])
        assert got[f"ctypes:{p}"] is False, p
        if not p.startswith("/proc/"):
            assert got[f"exists:{p}"] is False, p  # not there at all, not merely unreadable
    for p in writable:
        assert got[f"write:{p}"][0] == "fail" and got[f"sh_write:{p}"][0] == "fail", p
    assert not (venv / "jip-x").exists() and not Path("/usr/jip-x").exists()
    assert got["kill_runner"] == ["fail", "ProcessLookupError"]  # its own PID namespace
    assert got["setuid_root"][0] == "fail" and got["chroot"][0] == "fail"
    assert got["scratch_write"][0] == "ok" and got["shm_write"][0] == "ok"
    assert got["scratch_overflow"] == ["fail", "OSError"]  # the scratch is size-limited
    uid, gid = support.config.uid, support.config.gid
    assert got["ids"] == [uid, gid, []] and got["caps"] == "0000000000000000" and got["no_new_privs"] == "1"
    assert got["cwd"] == ["/tmp", "/tmp", "/tmp"]
    assert max(got["pids"]) < 50  # only its own processes
    assert got["root_home"] in (None, [".pyenv"])  # at most the way to a Python prefix under /root
    assert {"home", "var", "srv", "sys"}.isdisjoint(got["root"])
    assert {"passwd", "hosts", "ld.so.cache"} <= set(got["etc"]) and "shadow" not in got["etc"]
    assert not any(n.startswith("JIP_") for n in got["env"])
    assert not list(Path("/tmp").glob(f"{marker}*")) and not _own_groups(support)


def test_the_scratch_and_every_process_go_with_the_run(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport
) -> None:
    marker = f"jip-marker-{uuid.uuid4().hex}"
    first = run("escapes", tmp_path, kernel_dir, support=support, parameters={"marker": marker})
    assert json.loads(stdout_of(first))["scratch_write"][0] == "ok"
    second = run("leaves_a_child", tmp_path, kernel_dir, support=support, parameters={"marker": marker})
    assert second.status == "succeeded", second
    assert stdout_of(second).startswith("earlier scratch file: False False")
    assert not processes_with(marker.encode())  # a detached child died with its cgroup
    assert not _own_groups(support)
    assert (second.run_dir / "sandbox" / "kernels" / "jip" / "kernel.json").is_file()  # the site's record


def test_past_its_deadline_a_sandboxed_kernel_and_its_children_are_killed(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport
) -> None:
    t0 = time.monotonic()
    out = run("sleeps", tmp_path, kernel_dir, support=support, deadline_s=3)
    assert (out.status, out.reason, out.isolation) == ("failed", "timeout", "sandbox")
    assert time.monotonic() - t0 < 8
    assert not processes_with(b"time.sleep(600)") and not _own_groups(support)


def test_memory_over_the_limit_kills_the_kernel_and_not_the_runner(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jipkit.site"):
        out = run(
            "eats_memory", tmp_path, kernel_dir, support=support, parameters={"mib": 2 * MEMORY // 2**20}
        )
    assert (out.status, out.reason, out.isolation) == ("failed", "kernel_died", "sandbox")
    assert "memory limit" in caplog.text
    assert not _own_groups(support)
    again = run("ok", tmp_path, kernel_dir, support=support)  # the runner goes on
    assert again.status == "succeeded"


def _host_has_cuda() -> bool:
    from jipkit.site.sandbox import gpu_device_nodes

    if not gpu_device_nodes():
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(
    not _host_has_cuda(), reason="no NVIDIA GPU here (checked on an H100 machine: see README)"
)
def test_the_kernel_computes_on_the_gpu_unless_the_site_says_none(
    tmp_path: Path, kernel_dir: Path, support: SandboxSupport
) -> None:
    import dataclasses

    out = run("sees_gpu", tmp_path, kernel_dir, support=support, deadline_s=120)
    assert out.status == "succeeded", out
    assert json.loads(stdout_of(out)) == {"cuda": True, "sum": 1000.0}
    config = support.config.model_copy(update={"gpu": "none"})
    out = run(
        "sees_gpu", tmp_path, kernel_dir, support=dataclasses.replace(support, config=config), deadline_s=120
    )
    assert json.loads(stdout_of(out)) == {"cuda": False, "sum": None}
