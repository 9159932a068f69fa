"""Enrol a site with a coordinator: its key, its token, the coordinator keys it pins.

``jip site enrol`` (:func:`enrol`):

1. makes the site's Ed25519 key (``federation.key_path``, mode 0600) unless it exists;
2. sends the site's name, public key and the one-time enrol token (which the
   coordinator's administrator gave out of band) to ``POST /api/v1/sites/enrol``;
3. checks that the coordinator keys in the answer include the ones whose fingerprints
   the operator was given out of band (``--coordinator-fingerprint``): if not, this is
   not the coordinator it claims to be, and nothing is written;
4. pins those keys (``federation.pinned_keys_file``) and writes the site token to
   ``federation.token_file`` (mode 0600).  The token is shown nowhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from jipkit.errors import ConfigError, CoordinatorError, FederationError, SignatureError
from jipkit.protocol.signing import SigningKey, fingerprint
from jipkit.site.client import CoordinatorClient
from jipkit.site.fedconfig import FederationConfig, check_pinned_keys

__all__ = ["Enrolment", "enrol", "normalize_fingerprint"]


@dataclass(frozen=True)
class Enrolment:
    """What :func:`enrol` did.

    Attributes
    ----------
    site : str
    key_id, fingerprint : str
        The site key's ID and fingerprint (for the coordinator's administrator to compare).
    pinned : dict
        The coordinator keys now pinned, ``{key_id: public_key}``.
    token_path, keys_path : Path
        Where the site token and the pinned keys were written.
    new_key : bool
        Whether the site key was made now (False: an existing one was used).
    """

    site: str
    key_id: str
    fingerprint: str
    pinned: dict[str, str]
    token_path: Path
    keys_path: Path
    new_key: bool


def normalize_fingerprint(text: str) -> str:
    """``SHA256:<64 hex>`` from what an operator types (prefix optional, colons and case ignored).

    Raises
    ------
    FederationError
        Not a SHA-256 fingerprint.
    """
    body = text.strip()
    if body.upper().startswith("SHA256:"):
        body = body[7:]
    body = body.replace(":", "").replace(" ", "").lower()
    if len(body) != 64 or any(c not in "0123456789abcdef" for c in body):
        raise FederationError(
            f"Expected a coordinator key fingerprint like SHA256:<64 hex digits>, found {text!r}. "
            "Ask the coordinator's administrator for it (`jip coordinator add-site` prints it)."
        )
    return "SHA256:" + body


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def enrol(
    fed: FederationConfig,
    site: str,
    enrol_token: str,
    coordinator_fingerprints: Sequence[str],
    *,
    transport: httpx.BaseTransport | None = None,
) -> Enrolment:
    """Enrol ``site`` with the coordinator at ``fed.coordinator_url``.

    Parameters
    ----------
    fed : FederationConfig
        Paths resolved (see :func:`jipkit.site.fedconfig.federation_of`).
    site : str
        This site's name (the site configuration's ``name``).
    enrol_token : str
        The one-time token from the coordinator's administrator.
    coordinator_fingerprints : sequence of str
        Fingerprints of the coordinator keys to pin, obtained out of band.
    transport : httpx.BaseTransport, optional
        For tests.

    Returns
    -------
    Enrolment

    Raises
    ------
    ConfigError
        The token goes to an environment variable (enrol writes a file), or the site is
        already enrolled (a token file exists).
    CoordinatorError
        The coordinator refused the enrolment or could not be reached.
    SignatureError
        No coordinator key matches a given fingerprint: nothing was written.
    """
    wanted = [normalize_fingerprint(f) for f in coordinator_fingerprints]
    if not wanted:
        raise FederationError(
            "Give the coordinator key's fingerprint (--coordinator-fingerprint), obtained out of band."
        )
    if fed.token_env:
        raise ConfigError(
            f"federation.token_env is set ({fed.token_env}), but enrolment writes the site token to a file. "
            "Remove token_env (or set token_file) and enrol again."
        )
    token_path = fed.token_path
    if token_path.exists():
        raise ConfigError(
            f"This site is already enrolled: {token_path} exists. Remove it to enrol again "
            "(the coordinator's administrator must issue a new enrol token)."
        )
    new_key = not fed.key_path.exists()
    key = SigningKey.generate() if new_key else SigningKey.load(fed.key_path)
    if new_key:
        key.save(fed.key_path)

    client = CoordinatorClient(fed, None, transport=transport)
    try:
        body = client.enrol(site, enrol_token, key.public_b64)
    finally:
        client.close()
    try:
        site_token = body["site_token"]
        offered = check_pinned_keys(body["coordinator_keys"])
        if not isinstance(site_token, str) or not site_token:
            raise ValueError("no site token")
    except (ValueError, KeyError, TypeError) as err:
        raise CoordinatorError(f"The coordinator's answer to the enrolment is not usable ({err}).") from err

    by_fingerprint = {fingerprint(pub): (kid, pub) for kid, pub in offered.items()}
    missing = [f for f in wanted if f not in by_fingerprint]
    if missing:
        raise SignatureError(
            f"The coordinator at {fed.coordinator_url} presented keys {sorted(by_fingerprint)}, none of which "
            f"matches {missing}. Do not use it: check the URL, and the fingerprint with its administrator."
        )
    pinned = dict(by_fingerprint[f] for f in wanted)
    existing: dict[str, Any] = {}
    if fed.pinned_keys_file.is_file():
        existing = check_pinned_keys(json.loads(fed.pinned_keys_file.read_text(encoding="utf-8")))
    _write_private(fed.pinned_keys_file, json.dumps({**existing, **pinned}, indent=1, sort_keys=True) + "\n")
    _write_private(token_path, site_token + "\n")
    return Enrolment(
        site=site,
        key_id=key.key_id,
        fingerprint=fingerprint(key.public_b64),
        pinned=pinned,
        token_path=token_path,
        keys_path=fed.pinned_keys_file,
        new_key=new_key,
    )
