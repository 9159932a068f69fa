"""Fixtures for the site runner's tests.

- ``kernel_dir`` (session): a folder holding the ``jip`` kernelspec made from
  ``kernels/jip/kernel.json`` with this interpreter, as ``kernels/install.sh`` makes it.
- ``coordinator_key`` (session): the test coordinator's Ed25519 key.
- ``site``: a :class:`SiteFixture`: site ``site-a`` with its key, token file, pinned
  coordinator key, policy (study ``study-1``), state and run folders under ``tmp_path``.
- ``fake``: a :class:`tests.site.fakes.FakeCoordinator` for ``site``, as an httpx transport.

Runner tests run their kernels in the sandbox (:mod:`jipkit.site.sandbox`) where this
machine provides it (:data:`SANDBOX_AVAILABLE`: root, bubblewrap, a memory cgroup), and
unisolated (``allow_unisolated``) where it does not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jipkit.config import SiteConfig
from jipkit.protocol.messages import JOB_TYPE
from jipkit.protocol.notebook import canonical_notebook, version_hash
from jipkit.protocol.signing import SigningKey, sign_document
from jipkit.site.fedconfig import FederationConfig, SandboxConfig, SitePolicy
from jipkit.site.sandbox import probe
from tests.site.fakes import FakeCoordinator

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(__file__).parent / "notebooks"
#: Whether kernels can run in the sandbox here (and so whether the runner's tests use it).
SANDBOX_AVAILABLE = probe(SandboxConfig(), [sys.executable]).available


def processes_with(marker: bytes) -> list[int]:
    """PIDs of the processes whose command line contains ``marker`` (sandboxed ones too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load_canon(name: str) -> dict[str, Any]:
    """The canonical form of ``tests/site/notebooks/<name>.ipynb``."""
    return canonical_notebook((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def make_envelope(
    key: SigningKey | None,
    notebook: str | dict[str, Any] = "ok",
    *,
    site: str = "site-a",
    study: str = "study-1",
    parameters: dict[str, Any] | None = None,
    job_id: str | None = None,
    attempt: int = 1,
    expires_in: float = 600,
    deadline_s: float = 60,
    **overrides: Any,
) -> dict[str, Any]:
    """A job envelope, signed by ``key`` (unsigned when None), after ``overrides``."""
    canon = load_canon(notebook) if isinstance(notebook, str) else notebook
    now = dt.datetime.now(dt.UTC)
    env: dict[str, Any] = {
        "type": JOB_TYPE,
        "job_id": job_id or f"job-{uuid.uuid4().hex[:12]}",
        "attempt": attempt,
        "run_id": "run-1",
        "study": study,
        "site": site,
        "version_hash": version_hash(canon),
        "notebook": canon,
        "parameters": parameters or {},
        "issued_at": iso(now),
        "expires_at": iso(now + dt.timedelta(seconds=expires_in)),
        "deadline_s": deadline_s,
    }
    env.update(overrides)
    return sign_document(env, key) if key is not None else env


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec folder with ``jip`` made from the repository's template."""
    root = tmp_path_factory.mktemp("kernels")
    spec = (ROOT / "kernels" / "jip" / "kernel.json").read_text(encoding="utf-8")
    (root / "jip").mkdir()
    (root / "jip" / "kernel.json").write_text(spec.replace("@VENV_PYTHON@", sys.executable), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def coordinator_key() -> SigningKey:
    return SigningKey.generate()


@dataclass
class SiteFixture:
    """A site's configuration and its files, for tests."""

    root: Path
    key: SigningKey
    coordinator_key: SigningKey
    kernel_dir: Path
    token: str = "site-token-" + uuid.uuid4().hex
    name: str = "site-a"
    policy: dict[str, Any] = field(default_factory=dict)
    fed_overrides: dict[str, Any] = field(default_factory=dict)

    def federation(self) -> FederationConfig:
        policy = {
            "studies": ["study-1"],
            "coordinators": [self.coordinator_key.key_id],
            "allow_unisolated": not SANDBOX_AVAILABLE,
            **self.policy,
        }
        fed: dict[str, Any] = {
            "coordinator_url": "http://coordinator.test",
            "token_file": self.root / "site-token",
            "key_path": self.root / "site-key.pem",
            "coordinator_keys": {self.coordinator_key.key_id: self.coordinator_key.public_b64},
            "pinned_keys_file": self.root / "pinned.json",
            "workdir": self.root / "runs",
            "state_db": self.root / "runner.sqlite",
            "kernel_dirs": [self.kernel_dir],
            "lease_renew_s": 0.5,
            "poll_wait_s": 1,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "policy": SitePolicy(**policy),
        }
        fed.update(self.fed_overrides)
        return FederationConfig(**fed)

    def config(self) -> SiteConfig:
        return SiteConfig(
            name=self.name,
            index_path=self.root / "index.sqlite",
            cache_dir=self.root / "cache",
            workers=1,
            federation=self.federation(),
        )

    def envelope(self, notebook: str | dict[str, Any] = "ok", **kw: Any) -> dict[str, Any]:
        return make_envelope(self.coordinator_key, notebook, site=self.name, **kw)


@pytest.fixture
def site(tmp_path: Path, coordinator_key: SigningKey, kernel_dir: Path) -> SiteFixture:
    fx = SiteFixture(tmp_path, SigningKey.generate(), coordinator_key, kernel_dir)
    fx.key.save(tmp_path / "site-key.pem")
    fd = os.open(tmp_path / "site-token", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(fx.token + "\n")
    return fx


@pytest.fixture
def fake(site: SiteFixture) -> FakeCoordinator:
    return FakeCoordinator(site.key.public_b64, site.token)


def write_site_toml(path: Path, name: str, fed: FederationConfig, index_path: Path) -> Path:
    """A site configuration file with this federation table (as an operator writes it)."""
    data = fed.model_dump(mode="json")
    lines = [f"name = {json.dumps(name)}", f"index_path = {json.dumps(str(index_path))}", "[federation]"]
    lines += [
        f"{k} = {json.dumps(v)}"
        for k, v in data.items()
        if k not in ("policy", "coordinator_keys", "sandbox") and v is not None
    ]
    lines.append("[federation.sandbox]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in data["sandbox"].items() if v is not None]
    lines.append("[federation.coordinator_keys]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in data["coordinator_keys"].items()]
    output = data["policy"].pop("output", {})
    lines.append("[federation.policy]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in data["policy"].items()]
    lines.append("[federation.policy.output]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in output.items() if v is not None]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def runs_in(site: SiteFixture) -> list[Path]:
    """The run folders made so far."""
    runs = site.root / "runs"
    return (
        sorted(p for p in runs.iterdir() if p.is_dir() and p.name != "pending-approval")
        if runs.is_dir()
        else []
    )


def result_of(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def enrol_new_site(
    world: Any, tmp_path: Path, kernel_dir: Path, name: str, study: str, policy: dict[str, Any]
) -> tuple[SiteConfig, Any]:
    """A site ``name`` registered by the coordinator's admin (``world``, a
    :class:`tests.coordinator._helpers.World`) and enrolled by :func:`enrol` over HTTP.

    Returns its configuration and what enrolment returned.
    """
    from jipkit.protocol.signing import fingerprint
    from jipkit.site.enrol import enrol

    ticket = world.svc.add_site(name, study=study)
    keys = world.svc.public_keys()
    fed = FederationConfig(
        coordinator_url=world.coord.url,
        key_path=tmp_path / "site-key.pem",
        token_file=tmp_path / "site-token",
        pinned_keys_file=tmp_path / "coordinator-keys.json",
        workdir=tmp_path / "runs",
        state_db=tmp_path / "runner.sqlite",
        kernel_dirs=[kernel_dir],
        poll_wait_s=2,
        lease_renew_s=1,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        policy=SitePolicy(**{"studies": [study], "coordinators": list(keys), **policy}),
    )
    assert ticket.enrol_token is not None
    done = enrol(fed, name, ticket.enrol_token, [fingerprint(pub) for pub in keys.values()])
    cfg = SiteConfig(
        name=name,
        index_path=tmp_path / "index.sqlite",
        cache_dir=tmp_path / "cache",
        workers=1,
        federation=fed,
    )
    return cfg, done
