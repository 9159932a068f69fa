"""Provenance of a result: what ran, with what, on which data; signed with the result.

:func:`provenance` builds the ``provenance`` object of a ``jip.result/1`` document (the
format is in :mod:`jipkit.protocol.messages`):

- the notebook version hash and the SHA-256 of the canonical JSON of the parameters;
- a digest of the kernel's environment (:func:`environment_digest`): the SHA-256 of the
  sorted ``name==version`` lines of the kernel's Python and every package it can import,
  read once per runner process from the kernel's own interpreter;
- a data manifest (:func:`new_manifest`): how many series the run read, and their
  SeriesInstanceUIDs as HMAC-SHA256 under a random 32-byte salt chosen per result.  The
  salt and the UIDs stay at the site (:meth:`jipkit.site.state.RunnerState.keep_manifest`,
  ``jip site provenance JOB``); the result carries only the salt's SHA-256, which commits
  the site to it.  So the site can later prove which series a result used, and nobody
  without the salt can recover the UIDs or link them across results;
- the hashes of the site audit log's entries appended since the last acknowledged
  result (added when the result is signed: :meth:`~jipkit.site.state.RunnerState.audit_section`).

Hook for the data channel: the series a run read come from
``getattr(outcome, "series_read", None)`` (:func:`series_read`): a list of
SeriesInstanceUIDs that the runner's data server records.  Until the kernel's data
channel provides it, :class:`~jipkit.site.execute.Outcome` lacks the attribute and the
manifest is empty (``series: 0``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jipkit.protocol.canonical import canonical_json, sha256_hex

__all__ = [
    "EnvironmentDigest",
    "Manifest",
    "environment_digest",
    "kernel_python",
    "new_manifest",
    "parameters_sha256",
    "provenance",
    "salted_uid",
    "series_read",
]

log = logging.getLogger("jipkit.site")

_PYTHON: Final = re.compile(r"^python[0-9.]*$")
_LIST_PACKAGES: Final = r"""
import importlib.metadata as m, json, platform, re
seen = {}
for d in m.distributions():
    name = d.metadata.get("Name") if d.metadata is not None else None
    if name:
        seen.setdefault(re.sub(r"[-_.]+", "-", name).lower(), d.version)
print(json.dumps({"python": platform.python_version(),
                  "packages": sorted(f"{k}=={v}" for k, v in seen.items())}))
"""


@dataclass(frozen=True)
class EnvironmentDigest:
    """The kernel's environment, summarised.

    Attributes
    ----------
    digest : str
        SHA-256 (hex) of ``"\\n".join(lines)``, where ``lines`` is ``python==X.Y.Z``
        followed by the sorted ``name==version`` lines (names normalised as in PEP 503).
    python : str
        The kernel's Python version.
    packages : tuple of str
        The sorted ``name==version`` lines.
    """

    digest: str
    python: str
    packages: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """What a result carries: digest, Python version and package count."""
        return {"digest": self.digest, "python": self.python, "packages": len(self.packages)}


def environment_lines(python: str, packages: Iterable[str]) -> list[str]:
    """The lines the environment digest is taken over."""
    return [f"python=={python}", *sorted(set(packages))]


def kernel_python(resource_dir: Path) -> Path | None:
    """The Python interpreter a kernelspec starts (the first ``python*`` of its argv), or None."""
    try:
        argv = json.loads((resource_dir / "kernel.json").read_text(encoding="utf-8"))["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for arg in argv if isinstance(argv, list) else []:
        if isinstance(arg, str) and _PYTHON.match(Path(arg).name):
            return Path(arg)
    return None


@functools.lru_cache(maxsize=8)
def _digest_of(python: str) -> EnvironmentDigest | None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run(
            [python, "-I", "-c", _LIST_PACKAGES],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=True,
        )
        data = json.loads(proc.stdout)
        version, packages = str(data["python"]), [str(p) for p in data["packages"]]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as err:
        log.warning(
            "cannot list the kernel's packages with %s (%s): results carry no environment digest", python, err
        )
        return None
    lines = environment_lines(version, packages)
    return EnvironmentDigest(sha256_hex("\n".join(lines).encode()), version, tuple(lines[1:]))


def environment_digest(resource_dir: Path | None) -> EnvironmentDigest | None:
    """The environment digest of the kernel whose kernelspec is in ``resource_dir``.

    Computed by the kernel's own interpreter (``importlib.metadata``, isolated mode, no
    user site), once per process and interpreter.  None when the kernelspec names no
    Python interpreter (a wrapper the runner cannot see through) or it cannot be run:
    results then carry ``"environment": null``.
    """
    python = kernel_python(resource_dir) if resource_dir is not None else None
    return _digest_of(str(python)) if python is not None else None


def parameters_sha256(parameters: Any) -> str | None:
    """SHA-256 of the canonical JSON of the parameters (None when they are not a JSON object)."""
    if not isinstance(parameters, Mapping):
        return None
    try:
        return sha256_hex(canonical_json(dict(parameters)))
    except (TypeError, ValueError):
        return None


def salted_uid(salt: bytes, uid: str) -> str:
    """HMAC-SHA256 of a SeriesInstanceUID under the result's salt (hex)."""
    return hmac.new(salt, uid.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The series a run read, and their salted form.

    Attributes
    ----------
    salt : bytes
        32 random bytes, chosen for this result; kept at the site only.
    uids : tuple of str
        The SeriesInstanceUIDs read (each once, sorted); kept at the site only.
    """

    salt: bytes
    uids: tuple[str, ...]

    @property
    def hashed(self) -> list[str]:
        """The salted UIDs, sorted (their order tells nothing)."""
        return sorted(salted_uid(self.salt, u) for u in self.uids)

    @property
    def salt_sha256(self) -> str:
        """The salt's SHA-256: carried by the result, it commits the site to the salt."""
        return hashlib.sha256(self.salt).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The ``data`` object of a result's provenance."""
        return {"series": len(self.uids), "uids": self.hashed, "salt_sha256": self.salt_sha256}


def new_manifest(uids: Iterable[str]) -> Manifest:
    """A manifest of these series under a fresh salt."""
    return Manifest(secrets.token_bytes(32), tuple(sorted({str(u) for u in uids})))


def series_read(outcome: object) -> list[str]:
    """The SeriesInstanceUIDs a run read: ``outcome.series_read`` when there, else ``[]``."""
    value = getattr(outcome, "series_read", None)
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        return []
    return [str(v) for v in value]


def provenance(
    version_hash: str | None,
    parameters: Any,
    environment: EnvironmentDigest | None,
    manifest: Manifest | None,
) -> dict[str, Any]:
    """A result's ``provenance`` object, without its ``audit`` section (added at signing)."""
    return {
        "version_hash": version_hash,
        "parameters_sha256": parameters_sha256(parameters),
        "environment": environment.to_dict() if environment is not None else None,
        "data": manifest.to_dict()
        if manifest is not None
        else {"series": 0, "uids": [], "salt_sha256": None},
    }
