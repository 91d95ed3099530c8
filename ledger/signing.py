"""The Ed25519 key that signs seals: its file, its id, and signature checks.

The key lives in one PEM file (PKCS#8, unencrypted, mode 0600). When the file is absent it
is generated on first start. Several worker processes may start at once, so the file is
created race-free: each writes a complete key to its own temporary file and hard-links it
to the final name; `link` never replaces an existing file, so exactly one key wins and the
others read it back.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger(__name__)

ALGORITHM = "Ed25519"


class SigningKeyError(Exception):
    """The key file cannot be read, is not an Ed25519 key, or cannot be created."""


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key (RFC 8032 encoding)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A key's id: SHA-256 of its raw 32-byte public key, lowercase hex."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_base64(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_bytes(public_key)).decode("ascii")


def signature_is_valid(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    path: Path | None = None

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())


def _private_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def read_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read the signing key {path}: {error}") from None
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(private_key).__name__}, not an Ed25519 key")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "the seal signing key %s is readable by others (mode %o)", path, mode & 0o777
        )
    return SigningKey(private_key, path)


def read_public_key(path: Path) -> Ed25519PublicKey:
    """The public key from a PEM file holding either the private or the public key."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read {path}: {error}") from None
    if b"PUBLIC KEY" in data:
        try:
            public_key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as error:
            raise SigningKeyError(f"{path} is not a PEM public key: {error}") from None
        if not isinstance(public_key, Ed25519PublicKey):
            raise SigningKeyError(f"{path} holds a {type(public_key).__name__}, not Ed25519")
        return public_key
    return read_signing_key(path).public_key


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The key in `path`; a new one written there (mode 0600) when the file is absent."""
    if path.exists():
        return read_signing_key(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(_private_pem(Ed25519PrivateKey.generate()))
                file.flush()
                os.fsync(file.fileno())
            try:
                # Atomic, and unlike rename it never replaces a key another process won with.
                os.link(temporary, path)
                logger.info("generated a new seal signing key in %s", path)
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    except OSError as error:
        raise SigningKeyError(f"cannot create the signing key {path}: {error}") from None
    return read_signing_key(path)
