"""Site configuration: one TOML file plus ``JIP_*`` environment overrides.

A site is described by a file like::

    name = "site-a"
    index_path = "/var/lib/jip/index.sqlite"   # default: the user's data directory
    cache_dir = "/var/cache/jip"               # default: the user's cache directory
    cache_max_bytes = 50_000_000_000

    [[sources]]
    name = "pacs"
    kind = "dicomweb"
    url = "https://pacs.example.org/dicom-web"
    auth = { type = "basic", username = "jip", password_env = "JIP_PACS_PASSWORD" }
    ca_bundle = "/etc/jip/site-ca.pem"
    max_concurrent = 4

    [[sources]]
    name = "pacs-dimse"
    kind = "dimse"
    host = "pacs.example.org"
    port = 104
    called_aet = "PACS"
    calling_aet = "JIP"

    [[sources]]
    name = "exports"
    kind = "folder"
    path = "/data/research-exports"

The file is found by :func:`load_config`: an explicit path, then ``$JIP_CONFIG``, then
``<user config dir>/jip/site.toml``.  With none of them, the embedded defaults make a
local site with no PACS.  Top-level scalar keys can be overridden by environment
variables: ``JIP_NAME``, ``JIP_INDEX_PATH``, ``JIP_CACHE_DIR``, ``JIP_CACHE_MAX_BYTES``,
``JIP_WORKERS``.  Secrets never sit in the file: it names the environment variable
that holds them (``password_env``, ``token_env``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jipkit.errors import ConfigError
from jipkit.site.fedconfig import FederationConfig

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "DicomwebSourceConfig",
    "DimseSourceConfig",
    "FolderSourceConfig",
    "SiteConfig",
    "default_config_path",
    "load_config",
]


def _data_dir() -> Path:
    return Path(platformdirs.user_data_dir("jip", appauthor=False))


def _cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("jip", appauthor=False))


def default_config_path() -> Path:
    """Where :func:`load_config` looks when neither a path nor ``$JIP_CONFIG`` is given."""
    return Path(platformdirs.user_config_dir("jip", appauthor=False)) / "site.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(
            f"The site configuration takes the {what} from the environment variable {var}, "
            f"but it is not set. Set {var} in the environment of this process."
        )
    return value


class BasicAuth(_Strict):
    """HTTP basic authentication; the password comes from ``password_env`` (or ``password``)."""

    type: Literal["basic"] = "basic"
    username: str
    password_env: str | None = None
    password: str | None = Field(default=None, repr=False)

    def secret(self) -> str:
        """The password, read from the environment when ``password_env`` is set."""
        return _secret_from_env(self.password_env, "password") or self.password or ""


class BearerAuth(_Strict):
    """HTTP bearer-token authentication; the token comes from ``token_env`` (or ``token``)."""

    type: Literal["bearer"] = "bearer"
    token_env: str | None = None
    token: str | None = Field(default=None, repr=False)

    def secret(self) -> str:
        """The token, read from the environment when ``token_env`` is set."""
        return _secret_from_env(self.token_env, "token") or self.token or ""


class _SourceBase(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    max_concurrent: Annotated[int, Field(ge=1, le=64)] = 4
    """The most requests JIP has open at once against this source (protects production PACS)."""
    timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds to wait for an answer before giving up."""


class FolderSourceConfig(_SourceBase):
    """A folder of DICOM files on disk (research exports)."""

    kind: Literal["folder"] = "folder"
    path: Path


class DicomwebSourceConfig(_SourceBase):
    """A DICOMweb server: QIDO-RS for queries, WADO-RS for retrieval."""

    kind: Literal["dicomweb"] = "dicomweb"
    url: str
    auth: BasicAuth | BearerAuth | None = Field(default=None, discriminator="type")
    ca_bundle: Path | None = None
    """A PEM file with the site's certificate authorities, for TLS to the PACS."""
    page_size: Annotated[int, Field(ge=1)] = 1000
    """QIDO-RS results asked for per request (``limit``/``offset`` paging)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, found {v!r}")
        return v.rstrip("/")


class DimseSourceConfig(_SourceBase):
    """A PACS spoken to with DIMSE (C-ECHO, C-FIND, C-GET) over DICOM's own protocol."""

    kind: Literal["dimse"] = "dimse"
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    called_aet: Annotated[str, Field(min_length=1, max_length=16)]
    calling_aet: Annotated[str, Field(min_length=1, max_length=16)] = "JIP"


SourceConfig = Annotated[
    FolderSourceConfig | DicomwebSourceConfig | DimseSourceConfig, Field(discriminator="kind")
]


class SiteConfig(BaseSettings):
    """A site's configuration: its name, its data sources, where its index and cache live.

    Build one with :func:`load_config`; every field can also be passed directly.
    """

    model_config = SettingsConfigDict(env_prefix="JIP_", extra="forbid", frozen=True)

    name: str = "local"
    index_path: Path = Field(default_factory=lambda: _data_dir() / "index.sqlite")
    cache_dir: Path = Field(default_factory=_cache_dir)
    cache_max_bytes: Annotated[int, Field(ge=0)] = 20 * 1024**3
    workers: Annotated[int, Field(ge=1)] = Field(default_factory=lambda: os.cpu_count() or 1)
    """Processes used to read DICOM headers when indexing."""
    sources: list[SourceConfig] = Field(default_factory=list)
    federation: FederationConfig | None = None
    """The ``[federation]`` table: how this site's runner reaches a coordinator (see
    :mod:`jipkit.site.fedconfig`); absent on a site that takes part in no federation."""
    path: Path | None = Field(default=None, exclude=True)
    """The file this configuration was read from, if any."""

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[Any]) -> list[Any]:
        names = [s.name for s in v]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"expected unique source names, found {dups} more than once")
        return v

    def source(self, name: str) -> FolderSourceConfig | DicomwebSourceConfig | DimseSourceConfig:
        """The source configured under ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(
            f"No data source named {name!r} in the site configuration (configured: {known}). "
            "Add a [[sources]] table with that name, or use one of those."
        )


def format_validation(err: ValidationError, where: str, what: str = "site configuration") -> str:
    """A pydantic validation error as one message: each wrong key, what was expected, what was found."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        found = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: not a known key (remove it, or check its spelling)")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            shown = "" if isinstance(found, dict | list) else f", found {found!r}"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return f"Invalid {what} in {where}:\n" + "\n".join(lines)


def read_toml(path: Path, what: str = "site configuration") -> dict[str, Any]:
    """The table in a TOML file; a :class:`ConfigError` naming the file when it is not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"The {what} {path} is not valid TOML: {err}. Fix the file.") from err


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> SiteConfig:
    """Read the site configuration.

    Parameters
    ----------
    path : path-like, optional
        A TOML file.  Without it: ``$JIP_CONFIG``, then :func:`default_config_path`,
        then the embedded defaults (a local site with no PACS).
    **overrides
        Fields that take precedence over the file and the environment.

    Returns
    -------
    SiteConfig

    Raises
    ------
    ConfigError
        The file is missing, is not TOML, or a key is unknown or has a wrong value.
    """
    explicit = path is not None or "JIP_CONFIG" in os.environ
    chosen = Path(path if path is not None else os.environ.get("JIP_CONFIG", default_config_path()))
    data: dict[str, Any] = {}
    if chosen.is_file():
        data = read_toml(chosen)
        data["path"] = chosen
        base = chosen.parent
        for key in ("index_path", "cache_dir"):
            if key in data and not Path(data[key]).is_absolute():
                data[key] = base / data[key]
        for src in data.get("sources", []):
            for key in ("path", "ca_bundle"):
                if isinstance(src, dict) and key in src and not Path(src[key]).is_absolute():
                    src[key] = base / src[key]
    elif explicit:
        raise ConfigError(
            f"The site configuration {chosen} does not exist. Create it, or unset JIP_CONFIG "
            "to use the local defaults."
        )
    # Environment variables override the file; explicit overrides override both.
    env_set = {k for k in SiteConfig.model_fields if f"JIP_{k.upper()}" in os.environ}
    for k in env_set:
        data.pop(k, None)
    data.update(overrides)
    try:
        return SiteConfig(**data)
    except ValidationError as err:
        where = str(chosen) if chosen.is_file() else "the environment"
        raise ConfigError(format_validation(err, where)) from err
