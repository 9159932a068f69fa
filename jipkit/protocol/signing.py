"""Ed25519 signatures over canonical JSON documents.

A signed document is a JSON object with a ``signature`` member::

    {..., "signature": {"key_id": "3f2a...", "alg": "Ed25519", "value": "<base64>"}}

The signature covers the canonical JSON of the document without its ``signature``
member.  A key's ID is the first 16 hex digits of the SHA-256 of its raw public key;
its fingerprint (what an operator compares when enrolling a site) is the whole digest.
Private keys live in files readable by their owner only, never in a database.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jipkit.errors import ConfigError, SignatureError
from jipkit.protocol.canonical import canonical_json

__all__ = ["SigningKey", "fingerprint", "key_id", "sign_document", "verify_document"]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_public(public_b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
    except ValueError as err:
        raise SignatureError(
            f"Expected an Ed25519 public key (32 bytes, base64), found {public_b64[:60]!r}."
        ) from err


def fingerprint(public_b64: str) -> str:
    """``SHA256:<hex>`` of a public key: what operators compare out of band."""
    return "SHA256:" + hashlib.sha256(_raw(_load_public(public_b64))).hexdigest()


def key_id(public_b64: str) -> str:
    """The short ID of a public key (16 hex digits)."""
    return fingerprint(public_b64)[7:23]


class SigningKey:
    """An Ed25519 private key with its public half and ID."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        self.public_b64 = base64.b64encode(_raw(private.public_key())).decode()
        self.key_id = key_id(self.public_b64)

    def __repr__(self) -> str:
        return f"<SigningKey {self.key_id}>"

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the private key (PEM) to a new file only its owner can read."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a private key written by :meth:`save`.

        Raises
        ------
        ConfigError
            The file is missing, readable by others, or not an Ed25519 key.
        """
        p = Path(path)
        try:
            st = p.stat()
            data = p.read_bytes()
        except OSError as err:
            raise ConfigError(
                f"Cannot read the signing key {p}: {err.strerror}. Check the path in the configuration."
            ) from err
        if st.st_mode & 0o077:
            raise ConfigError(
                f"The signing key {p} can be read by other users (mode {oct(st.st_mode & 0o777)}). "
                f"Run: chmod 600 {p}"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as err:
            raise ConfigError(f"{p} is not a PEM private key.") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"Expected an Ed25519 key in {p}, found {type(key).__name__}.")
        return cls(key)

    def sign(self, data: bytes) -> str:
        """Signature of ``data``, base64."""
        return base64.b64encode(self._private.sign(data)).decode()


def _unsigned(doc: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in doc.items() if k != "signature"})


def sign_document(doc: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """A copy of ``doc`` with a ``signature`` member by ``key``."""
    out = {k: v for k, v in doc.items() if k != "signature"}
    out["signature"] = {"key_id": key.key_id, "alg": "Ed25519", "value": key.sign(_unsigned(out))}
    return out


def verify_document(doc: Mapping[str, Any], trusted: Mapping[str, str]) -> str:
    """Check ``doc``'s signature against trusted public keys; return the signer's key ID.

    Parameters
    ----------
    doc : mapping
        A signed document.
    trusted : mapping
        ``{key_id: public_key_base64}`` of the keys whose signatures are accepted.

    Raises
    ------
    SignatureError
        Unsigned, signed by a key not in ``trusted``, or the signature does not match
        (the document was changed after signing).
    """
    sig = doc.get("signature")
    if not isinstance(sig, Mapping) or not sig.get("value") or not sig.get("key_id"):
        raise SignatureError("The document is not signed: expected a 'signature' with key_id and value.")
    kid = str(sig["key_id"])
    if kid not in trusted:
        raise SignatureError(f"The document is signed by key {kid}, which is not among the trusted keys.")
    if sig.get("alg", "Ed25519") != "Ed25519":
        raise SignatureError(f"Expected an Ed25519 signature, found {sig.get('alg')!r}.")
    try:
        value = base64.b64decode(str(sig["value"]), validate=True)
        _load_public(trusted[kid]).verify(value, _unsigned(doc))
    except (InvalidSignature, ValueError) as err:
        raise SignatureError(
            f"The signature by key {kid} does not match the document: it was changed after signing."
        ) from err
    return kid
