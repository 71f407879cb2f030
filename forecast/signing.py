"""Signatures of registry versions (Ed25519 over ``MANIFEST.json``).

The manifest lists the sha256 of every file of a version, so a signature over
its bytes covers the whole version. The private key stays outside the
registry (``forecast train`` reads it from ``FORECAST_SIGNING_KEY_FILE``, or
``FORECAST_SIGNING_KEY`` holding the PEM text); the service needs only the
public key (``FORECAST_VERIFY_KEY_FILE``, else the one derived from the
signing key). ``FORECAST_ALLOW_UNSIGNED=1`` lets the service load versions
without a signature (development only; a signature that is present but does
not verify is refused always). See docs/registry.md, "Signed versions".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE = "MANIFEST.sig"
ALGORITHM = "ed25519"
KEY_ENV = "FORECAST_SIGNING_KEY"
KEY_FILE_ENV = "FORECAST_SIGNING_KEY_FILE"
VERIFY_FILE_ENV = "FORECAST_VERIFY_KEY_FILE"
ALLOW_UNSIGNED_ENV = "FORECAST_ALLOW_UNSIGNED"


class SignatureError(RuntimeError):
    """A key cannot be read, or a version's signature does not verify."""


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _private_from_pem(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{where}: not an Ed25519 key (run `forecast models keygen`)")
    return key


def _read(path: str | Path, env: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SignatureError(f"{env}={path}: cannot read the key file ({exc.strerror})") from None


def signing_key(env: dict[str, str] | None = None) -> Ed25519PrivateKey | None:
    """The configured private key, or None when none is configured."""
    env = dict(os.environ if env is None else env)
    if env.get(KEY_ENV):
        return _private_from_pem(env[KEY_ENV].encode(), KEY_ENV)
    if env.get(KEY_FILE_ENV):
        return _private_from_pem(_read(env[KEY_FILE_ENV], KEY_FILE_ENV), KEY_FILE_ENV)
    return None


def verify_key(env: dict[str, str] | None = None) -> Ed25519PublicKey | None:
    """The configured public key (or the signing key's), or None."""
    env = dict(os.environ if env is None else env)
    if env.get(VERIFY_FILE_ENV):
        data = _read(env[VERIFY_FILE_ENV], VERIFY_FILE_ENV)
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{VERIFY_FILE_ENV}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{VERIFY_FILE_ENV}: not an Ed25519 public key")
        return key
    private = signing_key(env)
    return None if private is None else private.public_key()


def allow_unsigned(env: dict[str, str] | None = None) -> bool:
    """Whether ``FORECAST_ALLOW_UNSIGNED`` allows unsigned versions (development)."""
    env = os.environ if env is None else env
    return _truthy(env.get(ALLOW_UNSIGNED_ENV))


def generate(path: str | Path) -> tuple[Path, Path]:
    """Write a new private key (mode 0600) at ``path`` and its public key at ``path.pub``."""
    path = Path(path)
    if path.exists():
        raise SignatureError(f"{path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> str:
    """The text of ``MANIFEST.sig`` for these manifest bytes."""
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class SignatureCheck:
    """Outcome of :func:`check`: ``verified``, ``unsigned`` or ``unchecked`` (no key)."""

    state: str
    key_id: str | None = None


def check(version_dir: str | Path, public: Ed25519PublicKey | None) -> SignatureCheck:
    """Check ``MANIFEST.sig`` of a version against ``public``.

    Raises :class:`SignatureError` when a signature is present and does not
    verify (altered manifest, another key, unreadable file).
    """
    path = Path(version_dir) / SIGNATURE
    if not path.is_file():
        return SignatureCheck("unsigned")
    try:
        doc: Any = json.loads(path.read_text())
        sig = base64.b64decode(doc["signature"], validate=True)
        kid = str(doc.get("key_id"))
        if doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {doc.get('algorithm')!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{SIGNATURE}: unreadable ({exc})") from None
    if public is None:
        return SignatureCheck("unchecked", kid)
    if kid != key_id(public):
        raise SignatureError(f"{SIGNATURE}: signed with key {kid}, not the configured key "
                             f"{key_id(public)}")
    try:
        public.verify(sig, (Path(version_dir) / "MANIFEST.json").read_bytes())
    except InvalidSignature:
        raise SignatureError(f"{SIGNATURE}: the signature does not match MANIFEST.json "
                             "(the version was altered after signing)") from None
    return SignatureCheck("verified", kid)
