"""The ``[federation]`` table of a site's configuration: how its runner reaches a coordinator.

Example, in the site's TOML file::

    [federation]
    coordinator_url = "https://jip.example.org"
    token_file = "/etc/jip/site-token"          # or token_env = "JIP_SITE_TOKEN"
    key_path = "/etc/jip/site-key.pem"           # the site's Ed25519 key, mode 0600
    ca_bundle = "/etc/jip/hospital-ca.pem"       # the proxy's TLS-intercepting CA
    https_proxy = "http://proxy.hospital.local:3128"
    workdir = "/var/lib/jip/runs"
    state_db = "/var/lib/jip/runner.sqlite"
    max_deadline_s = 3600

    [federation.coordinator_keys]                # pinned: {key_id = public key}
    3f2a9c0d1e2b4a5f = "q0lS...="

    [federation.policy]
    studies = ["lung-ct-2024"]                   # empty: serve none
    coordinators = ["3f2a9c0d1e2b4a5f"]          # key IDs; empty: serve none
    local_approval = true                        # approve each version here first
    allow_unisolated = false                     # the default: no sandbox, no run
    release_studies = ["lung-ct-2024"]           # hold these results for a steward (jip site release)
    release_stewards = 2                         # ... until two different stewards approve

    [federation.sandbox]                         # see jipkit.site.sandbox
    memory_bytes = 17179869184                   # 16 GiB per run
    scratch_bytes = 4294967296                   # the kernel's /tmp (and /dev/shm)

Relative paths are relative to the configuration file (see :func:`federation_of`).  The
site token is never written in the file: it comes from ``token_env`` or ``token_file``.
Everything has a default except ``coordinator_url``; keys, token and state default to
``<user data dir>/jip/federation/``.

This module imports only pydantic and platformdirs: :mod:`jipkit.config` imports it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jipkit.errors import ConfigError
from jipkit.site.disclosure.policy import OutputPolicy

if TYPE_CHECKING:  # pragma: no cover
    from jipkit.config import SiteConfig

__all__ = ["FederationConfig", "SandboxConfig", "SitePolicy", "check_pinned_keys", "federation_of"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


def _fed_dir() -> Path:
    return Path(platformdirs.user_data_dir("jip", appauthor=False)) / "federation"


def check_pinned_keys(keys: Any) -> dict[str, str]:
    """``keys`` when it maps key IDs to the base64 Ed25519 public keys they identify.

    Raises
    ------
    ValueError
        Not such a mapping, or an ID that is not its key's.
    """
    from jipkit.errors import SignatureError
    from jipkit.protocol.signing import key_id

    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(p, str) for k, p in keys.items()
    ):
        raise ValueError("expected a mapping of key IDs to base64 public keys")
    for kid, pub in keys.items():
        try:
            real = key_id(pub)
        except SignatureError as err:
            raise ValueError(f"key {kid}: {err}") from err
        if real != kid:
            raise ValueError(f"key {kid}: the public key has ID {real}; check what was pasted")
    return dict(keys)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SitePolicy(_Strict):
    """What this site agrees to run.  Everything is refused unless named here."""

    studies: list[str] = Field(default_factory=list)
    """Study names this site serves; an empty list serves none."""
    coordinators: list[str] = Field(default_factory=list)
    """Key IDs of the pinned coordinator keys whose jobs this site serves; empty serves none."""
    local_approval: bool = False
    """Run a notebook version only after this site's operator approved it (``jip site approve``)."""
    allow_unisolated: bool = False
    """Run notebooks without the sandbox when it cannot be used here.

    By default a runner whose machine cannot provide the sandbox (see
    :mod:`jipkit.site.sandbox`) refuses every job (``isolation_unavailable``).  With
    ``true`` it runs them in a plain kernel instead, and marks their results
    ``"isolation": "none"``.
    """

    release_required: bool = False
    """Hold every result for a data steward's release (``jip site release``) before it leaves."""
    release_studies: list[str] = Field(default_factory=list)
    """Studies whose every result is held for a data steward's release."""
    release_stewards: Annotated[int, Field(ge=1, le=5)] = 1
    """How many different data stewards must approve a held result (2: a four-eyes rule).
    One rejection rejects it."""

    output: OutputPolicy = Field(default_factory=OutputPolicy)
    """What may leave in a result: MIME types, sizes, the minimum count k, rounding, budgets
    (:class:`jipkit.site.disclosure.OutputPolicy`; the ``[federation.policy.output]`` table)."""

    @field_validator("coordinators")
    @classmethod
    def _key_ids(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if not _KEY_ID.match(k)]
        if bad:
            raise ValueError(f"expected coordinator key IDs (16 lowercase hex digits), found {bad}")
        return v


class SandboxConfig(_Strict):
    """How the runner confines a job's kernel (see :mod:`jipkit.site.sandbox`)."""

    enabled: bool = True
    """Use the sandbox where this machine can provide it; ``false`` never does (then jobs run
    only with ``policy.allow_unisolated``)."""
    bwrap: Path = Path("/usr/bin/bwrap")
    """bubblewrap (Debian package ``bubblewrap``)."""
    setpriv: Path = Path("/usr/bin/setpriv")
    """util-linux's ``setpriv``, which drops the kernel to ``uid``/``gid`` inside the sandbox."""
    uid: Annotated[int, Field(gt=0, lt=2**32 - 1)] = 2_000_000_000
    """The kernel's user ID: unprivileged and used by nothing else on this machine (not
    ``nobody``, which other services share)."""
    gid: Annotated[int, Field(gt=0, lt=2**32 - 1)] = 2_000_000_000
    """The kernel's group ID (its only group)."""
    memory_bytes: Annotated[int, Field(ge=64 * 2**20)] = 8 * 2**30
    """Memory limit of a run (the kernel, its children, its ``/tmp`` and ``/dev/shm``), by a
    memory cgroup; past it the kernel is killed (``kernel_died``)."""
    scratch_bytes: Annotated[int, Field(ge=2**20)] = 2 * 2**30
    """Size of the kernel's scratch ``/tmp`` (its home and working directory), and of its
    ``/dev/shm``: each a tmpfs that ends with the run."""
    pids_max: Annotated[int, Field(ge=16)] | None = 4096
    """Most processes and threads in a run, where the ``pids`` cgroup controller can be used."""
    cgroup_parent: Path | None = None
    """The cgroup under which each run's group is made: with cgroup v1 a folder of the memory
    hierarchy, with v2 a delegated folder with the memory controller.  Default: the runner's
    own cgroup."""
    ro_paths: list[Path] = Field(default_factory=list)
    """Further folders the kernel may read (for example model weights); never secrets."""
    gpu: Literal["auto", "none"] = "auto"
    """``auto``: show the kernel this machine's NVIDIA device nodes (``/dev/nvidia*``,
    ``/dev/nvidia-caps``), so that notebooks compute on its GPUs; ``none``: never (the kernel
    then sees no GPU).  A GPU is a device shared with the machine's other users: set ``none``
    where other work on the same GPUs must not be reachable from a job."""


class FederationConfig(_Strict):
    """How this site's runner reaches its coordinator, and what it agrees to run."""

    coordinator_url: str
    """The coordinator's base URL (``https://...``; ``http://`` only for loopback tests)."""
    token_env: str | None = None
    """The environment variable holding the site token (instead of ``token_file``)."""
    token_file: Path | None = None
    """A file (mode 0600) holding the site token; default ``<federation dir>/site-token``."""
    key_path: Path = Field(default_factory=lambda: _fed_dir() / "site-key.pem")
    """The site's Ed25519 private key (PEM, mode 0600), made by ``jip site enrol``."""
    coordinator_keys: dict[str, str] = Field(default_factory=dict)
    """Pinned coordinator public keys, ``{key_id: base64}``; merged with ``pinned_keys_file``."""
    pinned_keys_file: Path = Field(default_factory=lambda: _fed_dir() / "coordinator-keys.json")
    """Coordinator keys pinned by ``jip site enrol`` after the operator checked their fingerprint."""
    ca_bundle: Path | None = None
    """PEM certificate authorities for TLS to the coordinator (default: the system's)."""
    https_proxy: str | None = None
    """An HTTP(S) proxy for the connection to the coordinator (``http://host:port``)."""
    workdir: Path = Field(default_factory=lambda: _fed_dir() / "runs")
    """Where each run gets its own fresh working directory (kept for the site's records)."""
    state_db: Path = Field(default_factory=lambda: _fed_dir() / "runner.sqlite")
    """The runner's SQLite state: executed jobs, local approvals, the site audit log."""
    kernel_name: str = "jip"
    """The kernelspec notebooks run in (``kernels/install.sh`` installs ``jip`` into the venv)."""
    kernel_dirs: list[Path] = Field(default_factory=list)
    """Folders holding kernelspecs; empty: the runner's own environment (``<venv>/share/jupyter/kernels``)."""
    kernel_env: list[str] = Field(default_factory=list)
    """Extra environment variables the kernel may see (never ``JIP_*`` ones, never the token's)."""
    max_deadline_s: Annotated[float, Field(gt=0)] = 3600.0
    """The longest wall-clock time a run may take here, whatever the coordinator asks."""
    poll_wait_s: Annotated[float, Field(gt=0, le=25)] = 25.0
    """Seconds one long poll waits for a job (hospital proxies cut idle connections)."""
    lease_renew_s: Annotated[float, Field(gt=0)] = 10.0
    """The longest interval between lease renewals while a job runs."""
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    """The first wait after a failed request; it doubles (with jitter) on each further failure."""
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    """The longest wait between retries."""
    policy: SitePolicy = Field(default_factory=SitePolicy)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @field_validator("coordinator_url", "https_proxy")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, found {v!r}")
        return v.rstrip("/") if v else v

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"expected the name of an environment variable, found {v!r}")
        return v

    @field_validator("coordinator_keys")
    @classmethod
    def _keys_match_ids(cls, v: dict[str, str]) -> dict[str, str]:
        return check_pinned_keys(v)

    @field_validator("kernel_env")
    @classmethod
    def _no_secrets(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not _NAME.match(n) or n.upper().startswith("JIP_")]
        if bad:
            raise ValueError(f"the kernel may not see {bad}: JIP_* variables hold the site's secrets")
        return v

    @model_validator(mode="after")
    def _one_token_source(self) -> FederationConfig:
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        if self.token_env and self.token_env in self.kernel_env:
            raise ValueError(f"kernel_env names {self.token_env}, the site token's variable")
        return self

    @property
    def token_path(self) -> Path:
        """Where the site token file is (``token_file`` or the default), when not ``token_env``."""
        return self.token_file or _fed_dir() / "site-token"

    def site_token(self) -> str:
        """The site's API token, from ``token_env`` or the token file.

        Raises
        ------
        ConfigError
            The variable is unset, or the file is missing, empty or readable by others.
        """
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ConfigError(
                    f"The site token comes from the environment variable {self.token_env}, which is "
                    "not set. Set it, or enrol the site with `jip site enrol`."
                )
            return value
        path = self.token_path
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(
                f"Cannot read the site token file {path}: {err.strerror}. Enrol the site with "
                "`jip site enrol`, or set federation.token_file."
            ) from err
        if mode & 0o077:
            raise ConfigError(f"The site token file {path} can be read by other users. Run: chmod 600 {path}")
        if not value:
            raise ConfigError(f"The site token file {path} is empty. Enrol the site again.")
        return value

    def pinned_keys(self) -> dict[str, str]:
        """The coordinator keys this site trusts: ``coordinator_keys`` plus ``pinned_keys_file``.

        Raises
        ------
        ConfigError
            The pinned keys file is not a JSON object of key IDs to matching public keys.
        """
        keys = dict(self.coordinator_keys)
        if self.pinned_keys_file.is_file():
            try:
                checked = check_pinned_keys(json.loads(self.pinned_keys_file.read_text(encoding="utf-8")))
            except (ValueError, OSError) as err:
                raise ConfigError(
                    f"The pinned coordinator keys in {self.pinned_keys_file} cannot be used ({err}). "
                    "Enrol again, or pin the keys in federation.coordinator_keys."
                ) from err
            keys.update(checked)
        return keys

    def resolve_paths(self, base: Path) -> FederationConfig:
        """A copy whose relative paths are taken relative to ``base`` (the config file's folder)."""
        changes: dict[str, Any] = {}
        for name in ("token_file", "key_path", "pinned_keys_file", "ca_bundle", "workdir", "state_db"):
            value = getattr(self, name)
            if isinstance(value, Path) and not value.is_absolute():
                changes[name] = base / value
        dirs = [d if d.is_absolute() else base / d for d in self.kernel_dirs]
        if dirs != self.kernel_dirs:
            changes["kernel_dirs"] = dirs
        ro = [p if p.is_absolute() else base / p for p in self.sandbox.ro_paths]
        if ro != self.sandbox.ro_paths:
            changes["sandbox"] = self.sandbox.model_copy(update={"ro_paths": ro})
        return self.model_copy(update=changes) if changes else self


def federation_of(config: SiteConfig) -> FederationConfig:
    """The site's federation settings, with relative paths resolved against its file.

    Raises
    ------
    ConfigError
        The site configuration has no ``[federation]`` table.
    """
    fed = config.federation
    if fed is None:
        where = config.path or "the site configuration"
        raise ConfigError(
            f"{where} has no [federation] table: add one with at least coordinator_url "
            "(see `jip site enrol --help`)."
        )
    base = config.path.parent if config.path is not None else Path.cwd()
    return fed.resolve_paths(base)
