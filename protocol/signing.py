"""Signed envelopes, co-signed documents and advert freshness.

Sign bytes, not objects: an ``Envelope`` carries the exact payload bytes and an
Ed25519 signature over ``DOMAIN + payload``. ``open_envelope`` checks the
signature (and, when asked, that the signer is the expected peer) *before* the
payload is decoded. Leases and receipts are ``CoSigned``: the exact terms bytes
plus the provider's and the requester's signatures over
``COSIGN_DOMAIN + terms``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .codec import decode, decode_as, encode
from .errors import DecodeError, LocalProtocolError, SignatureError, StaleError
from .messages import Advert, CoSigned, Envelope, Message
from .peerid import peer_id_from_public_bytes, public_key_from_peer_id

DOMAIN = b"peerd/envelope/v1\0"
COSIGN_DOMAIN = b"peerd/cosigned/v1\0"
DEFAULT_MAX_SKEW = 30.0

M = TypeVar("M", bound=Message)
C = TypeVar("C", bound=CoSigned)


class Signer:
    """An Ed25519 private key and the peer ID it stands for."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_bytes = raw
        self.peer_id = peer_id_from_public_bytes(raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def private_seed(self) -> bytes:
        """The raw 32-byte private key (for building the libp2p key pair)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


# A tiny cache of peer ID → key: parsing a key costs more than a verify does not,
# but decoding base58 each time is needless work on the advert hot path.
_KEYS: dict[str, Ed25519PublicKey] = {}


def _key_for(peer_id: str) -> Ed25519PublicKey:
    key = _KEYS.get(peer_id)
    if key is None:
        try:
            key = public_key_from_peer_id(peer_id)
        except ValueError as exc:
            raise SignatureError(f"peer ID {peer_id[:60]!r} holds no valid key") from exc
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[peer_id] = key
    return key


def verify_signature(peer_id: str, data: bytes, sig: bytes) -> None:
    """Raise SignatureError unless ``sig`` is ``peer_id``'s signature of ``data``."""
    try:
        _key_for(peer_id).verify(sig, data)
    except InvalidSignature as exc:
        raise SignatureError(f"signature by {peer_id[:16]}… does not verify") from exc


# ---------------------------------------------------------------- envelopes
def seal(msg: Message, signer: Signer) -> Envelope:
    payload = encode(msg)
    return Envelope(payload=payload, signer=signer.peer_id, sig=signer.sign(DOMAIN + payload))


def seal_bytes(msg: Message, signer: Signer) -> bytes:
    return encode(seal(msg, signer))


def open_envelope(
    data: bytes | Envelope, *, expected_signer: str | None = None
) -> tuple[Envelope, Message]:
    """Verify then decode. ``data`` is an encoded envelope (or an Envelope)."""
    env = data if isinstance(data, Envelope) else decode_as(data, Envelope)
    assert isinstance(env, Envelope)
    if expected_signer is not None and env.signer != expected_signer:
        raise SignatureError(
            f"envelope signed by {env.signer[:16]}…, expected {expected_signer[:16]}…"
        )
    verify_signature(env.signer, DOMAIN + env.payload, env.sig)
    msg = decode(env.payload)
    if isinstance(msg, Envelope):
        raise DecodeError("nested envelopes are not allowed")
    return env, msg


# ---------------------------------------------------------------- adverts
@dataclass(frozen=True, slots=True)
class AdvertCheck:
    """What an advert must satisfy to be accepted at time ``now``."""

    now: float
    last_seq: int | None = None
    max_skew: float = DEFAULT_MAX_SKEW


def open_advert(data: bytes, *, source_peer: str | None, check: AdvertCheck) -> Advert:
    """Verify, bind and check an advert's freshness; return it or raise.

    The order is: signature over the exact bytes, signer == ``source_peer``
    (the libp2p sender), signer == the advert's ``peer_id``, then freshness
    and replay.
    """
    env, msg = open_envelope(data, expected_signer=source_peer)
    if not isinstance(msg, Advert):
        raise DecodeError(f"expected an advert, got {msg.TYPE!r}")
    if msg.peer_id != env.signer:
        raise SignatureError("advert peer_id differs from its signer")
    check_advert_fresh(msg, check)
    return msg


def check_advert_fresh(advert: Advert, check: AdvertCheck) -> None:
    if advert.expires_at <= check.now:
        raise StaleError(f"advert expired {check.now - advert.expires_at:.1f}s ago", code="expired")
    if advert.issued_at > check.now + check.max_skew:
        raise StaleError(
            f"advert issued {advert.issued_at - check.now:.1f}s in the future", code="future"
        )
    if check.last_seq is not None and advert.seq <= check.last_seq:
        raise StaleError(
            f"advert seq {advert.seq} is not newer than {check.last_seq}", code="replayed"
        )


# ---------------------------------------------------------------- co-signed documents
def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def propose(terms: Message, doc_type: type[C], signer: Signer, *, as_provider: bool) -> C:
    """Encode ``terms`` and sign them as one party; the other signature is empty."""
    raw = encode(terms)
    sig = signer.sign(COSIGN_DOMAIN + raw)
    if as_provider:
        return doc_type(terms=raw, provider_sig=sig, requester_sig=b"")
    return doc_type(terms=raw, provider_sig=b"", requester_sig=sig)


def countersign(doc: C, signer: Signer, *, as_provider: bool) -> C:
    sig = signer.sign(COSIGN_DOMAIN + doc.terms)
    return replace(doc, provider_sig=sig) if as_provider else replace(doc, requester_sig=sig)


def verify_cosigned(doc: CoSigned, terms_type: type[M], *, require_both: bool = True) -> M:
    """Check the signatures present (both, by default) and return the terms.

    The provider and requester named *in the terms* are the keys checked.
    """
    terms = decode_as(doc.terms, terms_type)
    provider = getattr(terms, "provider", None)
    requester = getattr(terms, "requester", None)
    if not isinstance(provider, str) or not isinstance(requester, str):
        raise LocalProtocolError(f"{terms_type.__name__} names no provider and requester")
    for party, sig in ((provider, doc.provider_sig), (requester, doc.requester_sig)):
        if sig:
            verify_signature(party, COSIGN_DOMAIN + doc.terms, sig)
        elif require_both:
            raise SignatureError(f"{terms_type.__name__} lacks the signature of {party[:16]}…")
    return terms  # type: ignore[return-value]
