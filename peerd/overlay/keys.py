"""WireGuard key pairs (X25519) in WireGuard's own text form: base64 of the 32 raw bytes."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

KEY_BYTES = 32


class WireGuardKeys(NamedTuple):
    private_key: str  # base64; never logged or signed
    public_key: str  # base64; goes into the signed offer


def generate_keys() -> WireGuardKeys:
    """A fresh key pair, one per gang lease."""
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WireGuardKeys(base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode())


def is_public_key(text: object) -> bool:
    """True for WireGuard's text form of a valid X25519 public key."""
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != KEY_BYTES:
        return False
    X25519PublicKey.from_public_bytes(raw)
    return True
