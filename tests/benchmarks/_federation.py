"""Shared pieces of the federation benchmarks: a real coordinator, its users, sites and runners.

A coordinator is ``jip coordinator serve`` in a subprocess on a free loopback port
(:class:`tests.coordinator._helpers.CoordinatorProcess`, stopped by PID), with cheap
argon2 settings: passwords are not what these benchmarks measure.  Users, the study
and the sites' enrol tickets are made through :class:`~jipkit.coordinator.service.Service`
in-process before the server starts, as ``jip coordinator add-user`` / ``add-site`` do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jipkit.config import SiteConfig
from jipkit.coordinator.client import CoordinatorClient
from jipkit.coordinator.service import Service
from jipkit.errors import ConfigError
from jipkit.protocol.signing import fingerprint
from jipkit.site.enrol import enrol
from jipkit.site.execute import check_kernel
from jipkit.site.fedconfig import FederationConfig, SitePolicy
from tests.coordinator._helpers import FAST_ARGON2, PASSWORD, ROOT, CoordinatorProcess, clean_env

__all__ = [
    "STUDY",
    "Federation",
    "RunnerProcess",
    "federation",
    "init_coordinator",
    "jupyter_dirs",
    "kernel_missing",
    "plural",
    "populate",
    "process_cpu_s",
    "trivial_notebook",
]

STUDY = "bench"
#: user -> role in the study
USERS = {"alice": "scientist", "bob": "reviewer", "carol": "reviewer", "dave": "coordinator"}
KERNEL = "jip"


def plural(n: int, word: str) -> str:
    """``"1 run"``, ``"5 runs"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def trivial_notebook(tag: str = "") -> dict[str, Any]:
    """An nbformat 4 notebook: one parameters cell and one ``jip.record``.

    ``tag`` goes into a comment: a different tag is a different notebook version.
    """
    comment = f"# {tag}\n" if tag else ""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": KERNEL, "display_name": "JIP", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "cell_type": "code",
                "id": "params",
                "metadata": {"tags": ["parameters"]},
                "execution_count": None,
                "outputs": [],
                "source": "n = 1",
            },
            {
                "cell_type": "code",
                "id": "record",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": f'{comment}import jipkit as jip\n\njip.record("n", n, kind="count", of="patients")',
            },
        ],
    }


def kernel_missing() -> str | None:
    """Why the ``jip`` kernel cannot run here (None when it is installed in this venv)."""
    try:
        check_kernel(KERNEL)
    except ConfigError as err:
        return str(err)
    return None


@contextmanager
def jupyter_dirs(root: Path) -> Iterator[None]:
    """IPython's and Jupyter's folders under ``root`` for kernels started by this process.

    papermill and ipykernel write into ``~/.ipython`` and ``~/.local/share/jupyter``
    otherwise; the runner gives each of its kernels such folders itself.
    """
    names = {
        "IPYTHONDIR": root / "ipython",
        "JUPYTER_CONFIG_DIR": root / "config",
        "JUPYTER_DATA_DIR": root / "data",
        "JUPYTER_RUNTIME_DIR": root / "runtime",
    }
    saved = {k: os.environ.get(k) for k in names}
    for k, path in names.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(path)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def init_coordinator(root: Path, **settings: Any) -> CoordinatorProcess:
    """A coordinator folder with its key and database (``jip coordinator init``), not started."""
    root.mkdir(parents=True, exist_ok=True)
    coord = CoordinatorProcess(root, **{**FAST_ARGON2, **settings})
    coord.init()
    return coord


def populate(svc: Service, sites: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Users with roles in the study, its sites: (API tokens by user, enrol tokens by site)."""
    svc.create_user("admin", PASSWORD, admin=True)
    svc.create_study(STUDY, review_quorum=2)
    for user, role in USERS.items():
        svc.create_user(user, PASSWORD)
        svc.grant_role(STUDY, user, role)
    tokens = {user: svc.login(user, PASSWORD) for user in USERS}
    tickets: dict[str, str] = {}
    for name in sites:
        ticket = svc.add_site(name, study=STUDY)
        assert ticket.enrol_token is not None
        tickets[name] = ticket.enrol_token
    return tokens, tickets


@dataclass
class Federation:
    """A started coordinator with users and a study; sites enrol with :meth:`site_config`."""

    root: Path
    coord: CoordinatorProcess
    tokens: dict[str, str]
    tickets: dict[str, str]
    keys: dict[str, str]
    runners: list[RunnerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.coord.url

    def client(self, user: str) -> CoordinatorClient:
        """A :class:`CoordinatorClient` with ``user``'s API token."""
        return CoordinatorClient(self.url, self.tokens[user])

    def approved_version(self, nb: Mapping[str, Any]) -> str:
        """Submit ``nb`` as alice; bob and carol approve it; its version hash."""
        with self.client("alice") as alice:
            vh = str(alice.submit_notebook(STUDY, dict(nb))["version_hash"])
        for reviewer in ("bob", "carol"):
            with self.client(reviewer) as c:
                c.review(vh, "approve", "benchmark")
        return vh

    def federation_config(self, name: str, **settings: Any) -> FederationConfig:
        """The ``[federation]`` settings of site ``name`` (files under ``root/name``)."""
        home = self.root / name
        return FederationConfig(
            coordinator_url=self.url,
            key_path=home / "site-key.pem",
            token_file=home / "site-token",
            pinned_keys_file=home / "coordinator-keys.json",
            workdir=home / "runs",
            state_db=home / "runner.sqlite",
            # sandboxed where this machine can; unisolated (and marked so) where it cannot
            policy=SitePolicy(studies=[STUDY], coordinators=list(self.keys), allow_unisolated=True),
            **settings,
        )

    def site_config(self, name: str, **settings: Any) -> SiteConfig:
        """Site ``name``, enrolled over HTTP with its one-time token (as ``jip site enrol``)."""
        fed = self.federation_config(name, **settings)
        enrol(fed, name, self.tickets[name], [fingerprint(pub) for pub in self.keys.values()])
        home = self.root / name
        return SiteConfig(
            name=name, index_path=home / "index.sqlite", cache_dir=home / "cache", workers=1, federation=fed
        )

    def site_toml(self, config: SiteConfig) -> Path:
        """``config`` written as the site's TOML file (for ``jip site run``)."""
        assert config.federation is not None
        data = config.federation.model_dump(mode="json", exclude_none=True)
        policy = data.pop("policy")
        sandbox = data.pop("sandbox", {})
        data.pop("coordinator_keys", None)
        lines = [f"name = {json.dumps(config.name)}", f"index_path = {json.dumps(str(config.index_path))}"]
        lines.append(f"cache_dir = {json.dumps(str(config.cache_dir))}")
        lines.append("[federation]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in data.items() if v != []]
        output = policy.pop("output", {})
        lines.append("[federation.policy]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in policy.items()]
        lines.append("[federation.policy.output]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in output.items()]
        lines.append("[federation.sandbox]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in sandbox.items()]
        path = self.root / config.name / "site.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start_runner(self, config: SiteConfig) -> RunnerProcess:
        """``jip site run`` for ``config`` in a subprocess (stopped by :meth:`close`)."""
        runner = RunnerProcess.start(self.site_toml(config), self.root / config.name / "runner.log")
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        for runner in reversed(self.runners):
            runner.stop()
        self.coord.stop()


@contextmanager
def federation(root: Path, sites: Sequence[str], **settings: Any) -> Iterator[Federation]:
    """A started coordinator (``settings`` for its TOML), users, a study and site tickets."""
    coord = init_coordinator(root / "coordinator", **settings)
    svc = coord.service()
    try:
        tokens, tickets = populate(svc, sites)
        keys = svc.public_keys()
    finally:
        svc.close()
    coord.start(timeout=60)
    fed = Federation(root, coord, tokens, tickets, keys)
    try:
        yield fed
    finally:
        fed.close()


@dataclass
class RunnerProcess:
    """A ``jip site run`` subprocess; :meth:`stop` sends SIGTERM to its PID, then SIGKILL."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, config: Path, log: Path) -> RunnerProcess:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jipkit.site.cli", "--config", str(config), "site", "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=clean_env(),
            )
        return cls(proc, log)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the runner logs that it polls the coordinator."""
        deadline = time.monotonic() + timeout
        while "runner started" not in self.log.read_text(errors="replace"):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the runner did not start in {timeout:g} s: {self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        """Raise when the runner has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the runner exited with status {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
