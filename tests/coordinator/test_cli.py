"""The coordinator's commands, run through their ``main`` in this process (fast); the
fixtures run ``init`` and ``serve`` as subprocesses, as a user would."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jipkit.coordinator.cli import main
from jipkit.protocol.signing import SigningKey, fingerprint
from tests.coordinator._helpers import (
    FAST_ARGON2,
    CoordinatorProcess,
    World,
    count,
    free_port,
    make_notebook,
    measure,
)


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


Jip = Callable[..., Done]


@pytest.fixture
def jip(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Jip:
    """Run ``jip ARGS`` with ``stdin`` text and extra environment variables."""

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Done:
        for k in ("JIP_COORDINATOR_URL", "JIP_COORDINATOR_TOKEN"):
            monkeypatch.delenv(k, raising=False)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        return Done(rc, out, err)

    return run


def _ok(proc: Done | subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def _refused(proc: Done, text: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_init_and_first_admin_without_default_password(tmp_path: Path, jip: Jip) -> None:
    coord = CoordinatorProcess(tmp_path, **FAST_ARGON2)
    cfg = str(coord.config_path)
    out = _ok(coord.cli("coordinator", "init", "-c", cfg))  # a real subprocess, once
    key = SigningKey.load(coord.config.key_file)
    assert fingerprint(key.public_b64) in out
    assert oct(coord.config.key_file.stat().st_mode & 0o777) == "0o600"
    _refused(jip("coordinator", "create-admin", "root", "-c", cfg), "--password-stdin")
    _refused(
        jip("coordinator", "create-admin", "root", "--password-stdin", "-c", cfg, stdin="short\n"),
        "at least 10",
    )
    _ok(
        jip(
            "coordinator",
            "create-admin",
            "root",
            "--password-stdin",
            "-c",
            cfg,
            stdin="a long admin password\n",
        )
    )
    _refused(
        jip(
            "coordinator",
            "create-admin",
            "root2",
            "--password-stdin",
            "-c",
            cfg,
            stdin="a long admin password\n",
        ),
        "An admin exists already",
    )
    db = sqlite3.connect(coord.db_path)
    try:
        rows = db.execute("SELECT username, is_admin, password_hash FROM users").fetchall()
    finally:
        db.close()
    assert [(r[0], r[1]) for r in rows] == [("root", 1)] and rows[0][2].startswith("$argon2id$")
    _ok(jip("coordinator", "add-study", "s1", "--quorum", "1", "-c", cfg))
    _refused(jip("coordinator", "add-site", "x", "--study", "nope", "-c", cfg), "No study named 'nope'")
    assert "intact" in _ok(jip("coordinator", "verify-audit", "-c", cfg))
    _refused(jip("coordinator", "serve", "-c", str(tmp_path / "missing.toml")), "does not exist")


def test_add_site_prints_enrol_token_and_fingerprint(world: World, jip: Jip) -> None:
    coord = world.coord
    out = _ok(
        jip("coordinator", "add-site", "cli-site", "--study", world.study, "-c", str(coord.config_path))
    )
    token = re.search(r"enrol token .*: (jipe_\S+)", out)
    assert token is not None
    key = SigningKey.load(coord.config.key_file)
    assert fingerprint(key.public_b64) in out
    site_key = SigningKey.generate()
    with coord.client() as anon:
        r = anon.post(
            "/sites/enrol",
            json={"site": "cli-site", "enrol_token": token.group(1), "public_key": site_key.public_b64},
        )
    assert r.status_code == 200 and r.json()["coordinator_keys"] == {key.key_id: key.public_b64}
    again = _ok(
        jip("coordinator", "add-site", "cli-site", "--study", world.study, "-c", str(coord.config_path))
    )
    assert "jipe_" not in again


def test_user_commands_submit_review_run_wait_results(world: World, tmp_path: Path, jip: Jip) -> None:
    coord = world.coord
    env = {"JIP_COORDINATOR_URL": coord.url}

    def as_(role: str) -> dict[str, str]:
        return {**env, "JIP_COORDINATOR_TOKEN": world.tokens[role]}

    nb_path = tmp_path / "overview.ipynb"
    nb_path.write_text(json.dumps(make_notebook(body="print('cli')")))
    out = _ok(jip("notebook", "submit", str(nb_path), "--study", world.study, env=as_("scientist")))
    vh = re.search(r"version ([0-9a-f]{64})", out)
    assert vh is not None and "parameter threshold: integer = -500" in out
    prefix = vh.group(1)[:10]
    listed = json.loads(
        _ok(jip("notebook", "list", "--study", world.study, "--format", "json", env=as_("reviewer")))
    )
    assert vh.group(1) in {v["version_hash"] for v in listed}
    for role in ("reviewer", "reviewer2"):
        out = _ok(jip("notebook", "review", prefix, "--study", world.study, "--approve", env=as_(role)))
    assert "approved" in out
    _refused(
        jip(
            "run",
            "--study",
            world.study,
            "--notebook",
            prefix,
            "-p",
            "threshold=high",
            env=as_("coordinator"),
        ),
        "'threshold' must be of JSON type integer",
    )

    site = world.new_sites(1)[0]

    def runner() -> None:  # a simulated site: claim, then post a signed result
        r = site.next(wait=20)
        envelope = r.json()["envelope"]
        site.post(
            envelope["job_id"],
            site.result(envelope, records=[count("ct_series", 7), measure("vol", 3.5, 4, 0.5)]),
        )

    t = threading.Thread(target=runner)
    t.start()
    proc = jip(
        "run", "--study", world.study, "--notebook", str(nb_path), "-p", "threshold=-200", "--site", site.name,
        "--wait", "--timeout", "30", env=as_("coordinator"),
    )  # fmt: skip
    t.join(timeout=30)
    out = _ok(proc)
    assert "1/1 done" in proc.stderr and f"{site.name}: succeeded" in proc.stderr
    assert "ct_series" in out and "combined" in out
    run_id = re.search(r"run (run-[0-9a-f]+)", out)
    assert run_id is not None

    rows = list(
        csv.DictReader(
            io.StringIO(_ok(jip("results", run_id.group(1), "--format", "csv", env=as_("scientist"))))
        )
    )
    assert rows == [{"site": site.name, "state": "succeeded", "ct_series": "7.0", "vol": "3.5"}]
    res = json.loads(_ok(jip("results", run_id.group(1), "--format", "json", env=as_("scientist"))))
    assert res["combined"][0]["pooled"] == {"total": 7}
    # an outsider is told what an unknown run id is told: not even that it exists
    _refused(jip("results", run_id.group(1), env=as_("outsider")), f"No run {run_id.group(1)!r}. (not_found)")


def test_http_commands_fail_in_one_line(jip: Jip) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    _refused(
        jip("notebook", "list", "--study", "s", "--url", url, "--token", "x"),
        "Cannot reach the coordinator",
    )
    _refused(jip("notebook", "list", "--study", "s"), "JIP_COORDINATOR_URL")
    _refused(jip("run", "--study", "s", "--notebook", "abc", "-p", "novalue", "--url", url), "NAME=VALUE")
