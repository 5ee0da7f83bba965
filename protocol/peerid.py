"""libp2p peer IDs for Ed25519 keys, without libp2p.

A libp2p peer ID of an Ed25519 key is the base58btc text of an *identity*
multihash over the protobuf ``PublicKey{Type: Ed25519 (1), Data: 32 bytes}``;
it therefore contains the public key, and every peer ID in peerd can be turned
back into the key that must have signed for it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import SignatureError

_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# protobuf: field 1 varint = 1 (Ed25519), field 2 bytes len 32
_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash: code 0x00 (identity), length 36
_MH_PREFIX = bytes([0x00, len(_PROTO_PREFIX) + 32])
_PREFIX = _MH_PREFIX + _PROTO_PREFIX


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return (b"1" * pad + bytes(reversed(out))).decode("ascii")


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text.encode("ascii", "replace"):
        digit = _INDEX.get(ch)
        if digit is None:
            raise SignatureError(f"peer ID {text[:60]!r} is not base58")
        n = n * 58 + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def peer_id_from_public_bytes(raw: bytes) -> str:
    """The libp2p peer ID of a raw 32-byte Ed25519 public key."""
    if len(raw) != 32:
        raise SignatureError("an Ed25519 public key is 32 bytes")
    return b58encode(_PREFIX + raw)


def public_bytes_from_peer_id(peer_id: str) -> bytes:
    if len(peer_id) > 128:
        raise SignatureError("peer ID too long")
    data = b58decode(peer_id)
    if len(data) != len(_PREFIX) + 32 or not data.startswith(_PREFIX):
        raise SignatureError(f"peer ID {peer_id[:60]!r} is not an inline Ed25519 key")
    return data[len(_PREFIX):]


def public_key_from_peer_id(peer_id: str) -> Ed25519PublicKey:
    """The Ed25519 key a peer ID stands for; SignatureError if it has none."""
    return Ed25519PublicKey.from_public_bytes(public_bytes_from_peer_id(peer_id))
