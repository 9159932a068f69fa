"""The [federation] configuration, enrolment, the `jip site` commands and the kernel install."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from jipkit.config import load_config
from jipkit.errors import ConfigError, CoordinatorError, FederationError, JipError, SignatureError
from jipkit.protocol.signing import SigningKey, fingerprint
from jipkit.site import cli
from jipkit.site.enrol import enrol, normalize_fingerprint
from jipkit.site.fedconfig import FederationConfig, federation_of
from jipkit.site.state import RunnerState
from tests.site.conftest import ROOT, SiteFixture, write_site_toml
from tests.site.fakes import enrol_transport


def write_config(path: Path, federation: str) -> Path:
    path.write_text(
        f'name = "site-a"\nindex_path = "index.sqlite"\n\n[federation]\n{federation}', encoding="utf-8"
    )
    return path


def test_the_federation_table_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    key = SigningKey.generate()
    cfg = load_config(
        write_config(
            tmp_path / "site.toml",
            'coordinator_url = "https://jip.example.org/"\ntoken_file = "secrets/token"\nworkdir = "runs"\n'
            f'[federation.coordinator_keys]\n{key.key_id} = "{key.public_b64}"\n'
            f'[federation.policy]\nstudies = ["s1"]\ncoordinators = ["{key.key_id}"]\nlocal_approval = true\n',
        )
    )
    fed = federation_of(cfg)
    assert fed.coordinator_url == "https://jip.example.org"
    assert fed.token_path == tmp_path / "secrets" / "token" and fed.workdir == tmp_path / "runs"
    assert fed.key_path.is_absolute() and fed.poll_wait_s == 25 and fed.kernel_name == "jip"
    assert fed.policy.local_approval and not fed.policy.allow_unisolated  # no sandbox, no run
    assert fed.sandbox.enabled and fed.sandbox.bwrap == Path("/usr/bin/bwrap")
    assert fed.pinned_keys() == {key.key_id: key.public_b64}


@pytest.mark.parametrize(
    ("federation", "complaint"),
    [
        ('coordinator_url = "https://x"\ntoken = "abc"', "token: not a known key"),
        ('coordinator_url = "https://x"\ntoken_env = "T"\ntoken_file = "t"', "not both"),
        ('coordinator_url = "https://x"\nkernel_env = ["JIP_PACS_PASSWORD"]', "JIP_PACS_PASSWORD"),
        ('coordinator_url = "https://x"\npoll_wait_s = 30', "poll_wait_s"),
        ('coordinator_url = "ftp://x"', "http"),
        (
            'coordinator_url = "https://x"\n[federation.coordinator_keys]\n0000000000000000 = "AAAA"',
            "32 bytes",
        ),
        ('coordinator_url = "https://x"\n[federation.policy]\ncoordinators = ["me"]', "16 lowercase hex"),
    ],
)
def test_bad_federation_tables_are_refused_with_the_key_named(
    tmp_path: Path, federation: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(write_config(tmp_path / "site.toml", federation))


def test_a_pasted_key_under_the_wrong_id_is_refused() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(ValueError, match=f"has ID {b.key_id}"):
        FederationConfig(coordinator_url="https://x", coordinator_keys={a.key_id: b.public_b64})


def test_a_site_without_a_federation_table_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('name = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no \[federation\] table"):
        federation_of(load_config(tmp_path / "site.toml"))


def test_the_site_token_comes_from_a_private_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    os.chmod(token, 0o644)
    fed = FederationConfig(coordinator_url="https://x", token_file=token)
    with pytest.raises(ConfigError, match="chmod 600"):
        fed.site_token()
    os.chmod(token, 0o600)
    assert fed.site_token() == "abc"
    fed = FederationConfig(coordinator_url="https://x", token_env="SITE_TOKEN")
    with pytest.raises(ConfigError, match="SITE_TOKEN"):
        fed.site_token()
    monkeypatch.setenv("SITE_TOKEN", "xyz")
    assert fed.site_token() == "xyz"


def federation_for_enrol(tmp_path: Path) -> FederationConfig:
    return FederationConfig(
        coordinator_url="https://coordinator.test",
        key_path=tmp_path / "fed" / "site-key.pem",
        token_file=tmp_path / "fed" / "site-token",
        pinned_keys_file=tmp_path / "fed" / "coordinator-keys.json",
    )


def test_enrol_makes_the_key_pins_the_checked_coordinator_key_and_stores_the_token(tmp_path: Path) -> None:
    coord, other = SigningKey.generate(), SigningKey.generate()
    seen: list[httpx.Request] = []
    offered = {coord.key_id: coord.public_b64, other.key_id: other.public_b64}
    fed = federation_for_enrol(tmp_path)
    done = enrol(
        fed,
        "site-a",
        "one-time",
        [fingerprint(coord.public_b64).lower()],
        transport=enrol_transport(offered, "the-site-token", seen),
    )
    assert done.pinned == {coord.key_id: coord.public_b64}  # only the key checked out of band
    assert fed.site_token() == "the-site-token"
    assert fed.pinned_keys() == {coord.key_id: coord.public_b64}
    for path in (fed.key_path, fed.token_path, fed.pinned_keys_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    site_key = SigningKey.load(fed.key_path)
    assert done.key_id == site_key.key_id and done.new_key
    (req,) = seen
    assert req.url.path == "/api/v1/sites/enrol" and "authorization" not in req.headers
    assert json.loads(req.content) == {
        "site": "site-a",
        "enrol_token": "one-time",
        "public_key": site_key.public_b64,
    }
    assert "one-time" not in str(req.url)
    with pytest.raises(ConfigError, match="already enrolled"):
        enrol(
            fed,
            "site-a",
            "one-time",
            [fingerprint(coord.public_b64)],
            transport=enrol_transport(offered, "t", seen),
        )
    assert len(seen) == 1


def test_enrol_writes_nothing_when_no_key_matches_the_fingerprint(tmp_path: Path) -> None:
    coord, impostor = SigningKey.generate(), SigningKey.generate()
    fed = federation_for_enrol(tmp_path)
    transport = enrol_transport({impostor.key_id: impostor.public_b64}, "t", [])
    with pytest.raises(SignatureError, match="Do not use it"):
        enrol(fed, "site-a", "one-time", [fingerprint(coord.public_b64)], transport=transport)
    assert not fed.token_path.exists() and not fed.pinned_keys_file.exists()


def test_enrol_reports_a_refused_enrol_token(tmp_path: Path) -> None:
    coord = SigningKey.generate()
    transport = enrol_transport({coord.key_id: coord.public_b64}, "t", [])
    with pytest.raises(CoordinatorError, match=r"HTTP 403.*not valid"):
        enrol(
            federation_for_enrol(tmp_path),
            "site-a",
            "stale",
            [fingerprint(coord.public_b64)],
            transport=transport,
        )


def test_fingerprints_are_accepted_as_operators_type_them() -> None:
    fp = fingerprint(SigningKey.generate().public_b64)
    hexpart = fp[7:]
    colons = ":".join(hexpart[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(hexpart) == normalize_fingerprint(f"sha256:{colons}") == fp
    with pytest.raises(FederationError, match="SHA256:<64 hex"):
        normalize_fingerprint("SHA256:abc")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jip")
    p.add_argument("--config")
    p.add_argument("-q", "--quiet", action="store_true")
    cli.register(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def site_toml(site: SiteFixture) -> Path:
    return write_site_toml(site.root / "site.toml", site.name, site.federation(), site.root / "index.sqlite")


def test_site_approve_and_audit_commands(site: SiteFixture, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(site_toml(site))
    h = "cd" * 32
    args = parse(["--config", config, "site", "approve", h, "--by", "dr-ops", "--note", "read it"])
    assert args.func(args) == 0
    with RunnerState(site.root / "runner.sqlite") as st:
        assert st.is_approved(h)
    args = parse(["--config", config, "site", "audit", "--last", "5"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "approved" in out and "1 entries, hash chain intact" in out


def test_site_run_once_through_the_command(site: SiteFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    config = str(site_toml(site))
    calls: list[Any] = []

    class FakeRunner:
        def __init__(self, cfg: Any) -> None:
            calls.append(cfg.name)

        def __enter__(self) -> FakeRunner:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def run_once(self, wait: float | None) -> None:
            calls.append(wait)

    monkeypatch.setattr("jipkit.site.runner.Runner", FakeRunner)
    args = parse(["--config", config, "-q", "site", "run", "--once", "--wait", "0"])
    assert args.func(args) == 0 and calls == ["site-a", 0.0]


def test_site_commands_fail_with_one_message(site: SiteFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(
        ["--config", str(site_toml(site)), "site", "enrol", "--coordinator-fingerprint", "SHA256:" + "a" * 64]
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: no prompt
    with pytest.raises(JipError, match="JIP_ENROL_TOKEN"):
        args.func(args)
    (site.root / "site-token").unlink()
    args = parse(["--config", str(site_toml(site)), "site", "run", "--once"])
    with pytest.raises(JipError, match="site token"):
        args.func(args)


def test_kernels_install_writes_the_jip_kernelspec_into_a_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    for _ in range(2):  # idempotent
        proc = subprocess.run(
            ["bash", str(ROOT / "kernels" / "install.sh"), str(venv)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    spec = json.loads((venv / "share" / "jupyter" / "kernels" / "jip" / "kernel.json").read_text())
    assert spec["argv"] == [
        str(venv / "bin" / "python"),
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ]
    assert spec["language"] == "python" and spec["display_name"] == "JIP"
