"""The coordinator's configuration: one TOML file plus ``JIP_COORD_*`` environment overrides.

A coordinator is described by a file like::

    data_dir = "/var/lib/jip-coordinator"     # the database and the signing key live here
    host = "127.0.0.1"
    port = 8750
    public_url = "https://jip.example.org"    # what sites and users are told to call
    lease_s = 60                              # a claimed job's lease, by this clock only
    max_attempts = 3                          # leases that may expire before a job fails
    review_quorum = 2                         # default approvals a version needs

The file is found by :func:`load_coordinator_config`: an explicit path, then
``$JIP_COORD_CONFIG``, then ``<user config dir>/jip/coordinator.toml``; without any, the
defaults.  Every top-level key can be overridden by ``JIP_COORD_<KEY>``
(``JIP_COORD_PORT=9000``).  Relative paths in the file are relative to the file.  The
configuration holds no secret: the signing key is a file (mode 600) named by
``key_path``, and passwords and tokens live hashed in the database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from jipkit.config import format_validation, read_toml
from jipkit.errors import ConfigError
from jipkit.protocol.api import LONG_POLL_MAX_S

__all__ = ["CoordinatorConfig", "default_coordinator_config_path", "load_coordinator_config"]

ENV_PREFIX = "JIP_COORD_"


def _data_dir() -> Path:
    return Path(platformdirs.user_data_dir("jip", appauthor=False)) / "coordinator"


def default_coordinator_config_path() -> Path:
    """Where :func:`load_coordinator_config` looks without a path or ``$JIP_COORD_CONFIG``."""
    return Path(platformdirs.user_config_dir("jip", appauthor=False)) / "coordinator.toml"


class CoordinatorConfig(BaseSettings):
    """Settings of one coordinator.

    Build one with :func:`load_coordinator_config`; every field can also be passed
    directly (tests do).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    data_dir: Path = Field(default_factory=_data_dir)
    """Folder of the database and the signing key (created mode 700 by ``init``)."""
    db_path: Path | None = None
    """The SQLite database file; default ``<data_dir>/coordinator.sqlite``."""
    key_path: Path | None = None
    """The Ed25519 private key (PEM, mode 600); default ``<data_dir>/coordinator-key.pem``."""
    host: str = "127.0.0.1"
    """Interface to listen on.  Put a TLS-terminating proxy in front for anything else."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8750
    public_url: str | None = None
    """The URL sites and users reach this coordinator at; default ``http://host:port``."""
    lease_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """Seconds a claimed job's lease lasts; the runner renews it while the notebook runs."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    """Attempts a job gets: after this many expired leases it fails with ``lease_expired``."""
    long_poll_max_s: Annotated[float, Field(ge=0, le=LONG_POLL_MAX_S)] = float(LONG_POLL_MAX_S)
    """The longest a ``jobs/next`` long poll is held open (hospital proxies cut idle ones)."""
    review_quorum: Annotated[int, Field(ge=1, le=20)] = 2
    """Approvals by reviewers other than the author that a version needs (default per study)."""
    envelope_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    """A signed envelope's validity (``expires_at - issued_at``): a runner must start it before."""
    max_deadline_s: Annotated[int, Field(ge=1)] = 86_400
    """The longest wall-clock deadline a run may give each job."""
    token_ttl_s: Annotated[float, Field(gt=0)] = 30 * 86_400.0
    """How long a user's API token from ``POST /auth/token`` stays valid."""
    enrol_ttl_s: Annotated[float, Field(gt=0)] = 7 * 86_400.0
    """How long a site's one-time enrol token stays valid."""
    max_result_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024**2
    """The largest result document a site may post."""
    argon2_time_cost: Annotated[int, Field(ge=1)] = 3
    """argon2id iterations for password hashes (argon2-cffi's default, RFC 9106 low-memory)."""
    argon2_memory_kib: Annotated[int, Field(ge=8192)] = 65_536
    """argon2id memory per password hash, KiB (at least 8 MiB)."""
    argon2_parallelism: Annotated[int, Field(ge=1, le=16)] = 4
    """argon2id lanes per password hash."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    """SQLite ``synchronous``: FULL survives power loss as well as a killed process."""
    path: Path | None = Field(default=None, exclude=True)
    """The file this configuration was read from, if any."""

    @property
    def database_file(self) -> Path:
        """The SQLite database file in effect."""
        return self.db_path or self.data_dir / "coordinator.sqlite"

    @property
    def key_file(self) -> Path:
        """The signing key file in effect."""
        return self.key_path or self.data_dir / "coordinator-key.pem"

    @property
    def url(self) -> str:
        """The public URL in effect."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def load_coordinator_config(
    path: str | os.PathLike[str] | None = None, **overrides: Any
) -> CoordinatorConfig:
    """Read the coordinator's configuration.

    Parameters
    ----------
    path : path-like, optional
        A TOML file.  Without it: ``$JIP_COORD_CONFIG``, then
        :func:`default_coordinator_config_path`, then the defaults.
    **overrides
        Fields that take precedence over the file and the environment (None values are
        ignored, so command-line options can be passed through as they are).

    Returns
    -------
    CoordinatorConfig

    Raises
    ------
    ConfigError
        The file is missing (when named), is not TOML, or a key is unknown or invalid.
    """
    explicit = path is not None or "JIP_COORD_CONFIG" in os.environ
    chosen = Path(
        path if path is not None else os.environ.get("JIP_COORD_CONFIG", default_coordinator_config_path())
    )
    data: dict[str, Any] = {}
    if chosen.is_file():
        data = read_toml(chosen, "coordinator configuration")
        chosen = chosen.resolve()
        data["path"] = chosen
        for key in ("data_dir", "db_path", "key_path"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = chosen.parent / data[key]
    elif explicit:
        raise ConfigError(
            f"The coordinator configuration {chosen} does not exist. Create it, or unset "
            "JIP_COORD_CONFIG to use the defaults."
        )
    for name in CoordinatorConfig.model_fields:
        if f"{ENV_PREFIX}{name.upper()}" in os.environ:
            data.pop(name, None)  # the environment overrides the file
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CoordinatorConfig(**data)
    except ValidationError as err:
        where = str(chosen) if chosen.is_file() else "the environment"
        raise ConfigError(format_validation(err, where, "coordinator configuration")) from err
