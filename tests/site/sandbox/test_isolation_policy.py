"""Probing the sandbox, the command it builds, and the runner's policy when it is missing."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jipkit.data.site import Site
from jipkit.data.synth import write_series
from jipkit.protocol.messages import REFUSAL_REASONS
from jipkit.site.fedconfig import SandboxConfig
from jipkit.site.runner import Runner
from jipkit.site.sandbox import CgroupPlace, Interpreter, RunGroup, bwrap_argv, kernel_interpreter, probe
from tests.site.conftest import SiteFixture, result_of, runs_in
from tests.site.fakes import FakeCoordinator
from tests.site.sandbox.conftest import load_canon, sandboxed

MISSING = Path("/nonexistent/bwrap")


def test_the_command_shows_the_system_and_python_read_only_and_nothing_else(tmp_path: Path) -> None:
    interp = kernel_interpreter(sys.executable)
    assert Path(sys.prefix).resolve() in interp.roots or Path(sys.prefix) in interp.roots
    cfg = SandboxConfig(scratch_bytes=2**24, ro_paths=[tmp_path / "weights"])
    (tmp_path / "weights").mkdir()
    argv = bwrap_argv(cfg, interp, etc_dir=tmp_path / "etc", runtime=Path("/tmp/jip-rt-x"))
    text = " ".join(argv)
    for flag in ("--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc"):
        assert flag in argv
    assert "--unshare-all" not in argv and "--unshare-user" not in argv  # a real uid, not a namespace's
    binds = [(argv[i], argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a.endswith("bind")]
    writable = [b for b in binds if b[0] == "--bind"]
    assert writable == [("--bind", "/tmp/jip-rt-x", "/tmp/jip-rt-x")]
    sources = {Path(src) for kind, src, _ in binds if kind == "--ro-bind"}
    assert Path("/usr") in sources and (tmp_path / "weights") in sources
    for never in ("/", "/root", "/home", "/var", "/etc", "/tmp", "/sys", "/run"):
        assert Path(never) not in sources
    assert "--size 16777216 --perms 1777 --tmpfs /tmp" in text
    assert argv[argv.index(str(cfg.setpriv)) :] == [
        str(cfg.setpriv),
        f"--reuid={cfg.uid}",
        f"--regid={cfg.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--pdeathsig=KILL",
        "--",
    ]


def test_probe_says_why_the_sandbox_cannot_be_used() -> None:
    argv = [sys.executable]
    missing = probe(SandboxConfig(bwrap=MISSING), argv)
    assert not missing.available and ("not found" in missing.describe() or "root" in missing.describe())
    assert "enabled is false" in probe(SandboxConfig(enabled=False), argv).describe()


@sandboxed
def test_probe_refuses_a_view_that_would_show_what_the_runner_protects() -> None:
    exposed = probe(SandboxConfig(), [sys.executable], protected=[Path(sys.prefix) / "site-token"])
    assert not exposed.available and "would show" in exposed.describe()
    for folder in ("/work/main/jipkit", sys.prefix):
        assert not probe(
            SandboxConfig(ro_paths=[Path(folder)]), [sys.executable], protected=[Path(folder)]
        ).available


def test_a_run_group_of_cgroup_v2_sets_its_limits(tmp_path: Path) -> None:
    place = CgroupPlace(2, tmp_path, tmp_path)
    group = RunGroup(place, "jip-t-1", 2**30, 64)
    assert (tmp_path / "jip-t-1" / "memory.max").read_text() == str(2**30)
    assert (tmp_path / "jip-t-1" / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "jip-t-1" / "pids.max").read_text() == "64"
    assert group.procs_files == (str(tmp_path / "jip-t-1" / "cgroup.procs"), "")
    (tmp_path / "jip-t-1" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1


def _runner(site: SiteFixture, fake: FakeCoordinator) -> Runner:
    return Runner(site.config(), transport=fake.transport())


def test_without_isolation_the_runner_refuses_unless_the_policy_allows_it(
    site: SiteFixture, fake: FakeCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    assert "isolation_unavailable" in REFUSAL_REASONS
    site.fed_overrides["sandbox"] = SandboxConfig(bwrap=MISSING)
    site.policy["allow_unisolated"] = False
    env = site.envelope("ok", parameters={"threshold": -1})
    fake.offer(env)
    with caplog.at_level(logging.WARNING, logger="jipkit.site"), _runner(site, fake) as r:
        assert "every job will be refused (isolation_unavailable)" in caplog.text
        report = r.run_once(wait_s=0)
        assert report is not None
        assert (report.status, report.reason, report.delivered) == ("refused", "isolation_unavailable", True)
        fake.offer(env)  # the same job again: this site already refused it
        again = r.run_once(wait_s=0)
        assert again is not None and (again.status, again.reason) == ("refused", "replay")
    doc = result_of(fake.accepted[env["job_id"]])
    assert (doc["status"], doc["reason"], doc["isolation"], doc["kernel"]) == (
        "refused",
        "isolation_unavailable",
        None,
        None,
    )
    assert runs_in(site) == []  # nothing ran

    site.policy["allow_unisolated"] = True
    env = site.envelope("ok", parameters={"threshold": -1})
    fake.offer(env)
    with _runner(site, fake) as r:
        report = r.run_once(wait_s=0)
        assert report is not None and (report.status, report.delivered) == ("succeeded", True)
    doc = result_of(fake.accepted[env["job_id"]])
    assert (doc["status"], doc["isolation"]) == ("succeeded", "none")


@sandboxed
def test_a_sandboxed_job_reads_the_sites_data_and_its_result_says_so(
    site: SiteFixture, fake: FakeCoordinator, tmp_path: Path
) -> None:
    site.fed_overrides["sandbox"] = SandboxConfig(memory_bytes=2**30, scratch_bytes=2**24)
    ct = write_series(tmp_path / "dicom" / "ct", shape=(3, 16, 16), seed=5)
    write_series(tmp_path / "dicom" / "mr", shape=(2, 8, 8), modality="MR", echoes=2, seed=6)
    Site(site.config()).index_paths([tmp_path / "dicom"], progress=False)
    env = site.envelope(load_canon("reads_data"))
    fake.offer(env)
    with _runner(site, fake) as r:
        assert r.sandbox.available and r.sandbox.tag != "run"
        report = r.run_once(wait_s=0)
    assert report is not None and (report.status, report.delivered) == ("succeeded", True)
    doc = result_of(fake.accepted[env["job_id"]])
    assert doc["isolation"] == "sandbox"
    printed = json.loads(doc["outputs"][0]["outputs"][0]["text"])
    assert printed["site"] == "RemoteSite"  # (a UID printed here would be removed by the site's checks)
    assert printed["shape"] == list(ct.expected.shape)
    assert printed["sum"] == float(ct.expected.astype("float64").sum())
    if isinstance(doc.get("provenance"), dict) and doc["provenance"].get("data"):
        assert doc["provenance"]["data"]["series"] == 2  # the channel's record, hashed


@sandboxed
def test_a_working_sandbox_is_probed_in_well_under_a_second() -> None:
    t0 = time.monotonic()
    support = probe(SandboxConfig(), [sys.executable])
    assert time.monotonic() - t0 < 1
    assert support.available and support.place is not None and support.interpreter is not None
    assert support.describe().startswith("sandbox available")


def test_an_interpreter_outside_the_view_is_not_shown() -> None:
    interp = Interpreter("/x/bin/python", (Path("/x"),))
    argv = bwrap_argv(SandboxConfig(), interp, etc_dir=Path("/e"), runtime=None)
    assert argv[argv.index("/x") - 1 : argv.index("/x") + 2] == ["--ro-bind", "/x", "/x"]


@sandboxed
def test_a_new_runner_removes_the_groups_and_processes_a_killed_one_left(
    site: SiteFixture, fake: FakeCoordinator
) -> None:
    with _runner(site, fake) as r:
        place, tag = r.sandbox.place, r.sandbox.tag
    assert place is not None
    left = place.memory / f"jip-{tag}-job-1-a1-deadbeef"
    left.mkdir()
    orphan = subprocess.Popen(["sleep", "61.5"])
    try:
        (left / "cgroup.procs").write_text(str(orphan.pid))
        with _runner(site, fake):
            assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert not left.exists()
    finally:
        orphan.kill()
        orphan.wait()
        if left.exists():
            left.rmdir()


def test_the_gpus_device_nodes_are_shown_unless_the_site_says_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jipkit.site.sandbox as sandbox

    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null", "sda"):
        (dev / name).touch()
    monkeypatch.setattr(sandbox, "DEV", dev)
    interp = kernel_interpreter(sys.executable)
    argv = bwrap_argv(SandboxConfig(), interp, etc_dir=tmp_path / "etc", runtime=None)
    shown = [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind"]
    assert shown == [str(dev / n) for n in ("nvidia-caps", "nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl")]
    assert argv.index("--dev-bind") > argv.index("--dev")  # on top of the minimal /dev
    argv = bwrap_argv(SandboxConfig(gpu="none"), interp, etc_dir=tmp_path / "etc", runtime=None)
    assert "--dev-bind" not in argv
    monkeypatch.setattr(sandbox, "DEV", tmp_path / "no-such-dev")
    assert sandbox.gpu_device_nodes() == []
