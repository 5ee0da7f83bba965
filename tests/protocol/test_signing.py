"""Envelopes, adverts and co-signed documents refuse every tampering."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec, messages as m, peerid, signing
from protocol.errors import DecodeError, ProtocolError, SignatureError, StaleError

from .helpers import NOW, other_signer, provider_signer, requester_signer, sample_advert, sample_spec

PROVIDER = provider_signer()
OTHER = other_signer()
CHECK = signing.AdvertCheck(now=NOW + 1)


def sealed_advert(signer: signing.Signer = PROVIDER, **changes: object) -> bytes:
    advert = dataclasses.replace(sample_advert(signer.peer_id), **changes)
    return signing.seal_bytes(advert, signer)


def envelope_fields(data: bytes) -> m.Envelope:
    env = codec.decode(data)
    assert isinstance(env, m.Envelope)
    return env


def test_peer_id_round_trip() -> None:
    pid = PROVIDER.peer_id
    assert pid.startswith("12D3KooW")  # libp2p's Ed25519 identity peer IDs
    assert peerid.public_bytes_from_peer_id(pid) == PROVIDER.public_bytes


@pytest.mark.parametrize("bad", ["", "0OIl", "12D3KooW", "Qm" + "1" * 44, "x" * 200])
def test_peer_ids_without_a_key_are_refused(bad: str) -> None:
    with pytest.raises(SignatureError):
        signing.verify_signature(bad, b"data", bytes(64))


def test_valid_advert_is_accepted() -> None:
    advert = signing.open_advert(sealed_advert(), source_peer=PROVIDER.peer_id, check=CHECK)
    assert advert.peer_id == PROVIDER.peer_id


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_bit_in_payload_or_signature_is_refused(data: st.DataObject) -> None:
    env = envelope_fields(sealed_advert())
    field = data.draw(st.sampled_from(["payload", "sig"]))
    raw = bytearray(getattr(env, field))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = codec.encode(dataclasses.replace(env, **{field: bytes(raw)}))
    with pytest.raises(SignatureError):
        signing.open_advert(tampered, source_peer=None, check=CHECK)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 255))
def test_flipped_bit_in_signer_key_is_refused(bit: int) -> None:
    env = envelope_fields(sealed_advert())
    key = bytearray(PROVIDER.public_bytes)
    key[bit // 8] ^= 1 << (bit % 8)
    signer = peerid.peer_id_from_public_bytes(bytes(key))
    tampered = codec.encode(dataclasses.replace(env, signer=signer))
    with pytest.raises(SignatureError):
        signing.open_envelope(tampered)


def test_forged_advert_claiming_another_peer_id() -> None:
    # OTHER signs an advert that claims to be PROVIDER's.
    forged = signing.seal_bytes(sample_advert(PROVIDER.peer_id), OTHER)
    with pytest.raises(SignatureError, match="peer_id differs"):
        signing.open_advert(forged, source_peer=OTHER.peer_id, check=CHECK)
    # ... and relabels the envelope as PROVIDER's: the signature no longer verifies.
    relabelled = codec.encode(dataclasses.replace(envelope_fields(forged), signer=PROVIDER.peer_id))
    with pytest.raises(SignatureError, match="does not verify"):
        signing.open_advert(relabelled, source_peer=PROVIDER.peer_id, check=CHECK)


def test_mis_bound_advert_relayed_as_if_from_another_source() -> None:
    with pytest.raises(SignatureError, match="expected"):
        signing.open_advert(sealed_advert(), source_peer=OTHER.peer_id, check=CHECK)


@pytest.mark.parametrize(
    ("check", "code"),
    [
        (signing.AdvertCheck(now=NOW + 60), "expired"),
        (signing.AdvertCheck(now=NOW + 1000), "expired"),
        (signing.AdvertCheck(now=NOW - 31), "future"),
        (signing.AdvertCheck(now=NOW + 1, last_seq=1), "replayed"),
        (signing.AdvertCheck(now=NOW + 1, last_seq=5), "replayed"),
    ],
)
def test_stale_adverts(check: signing.AdvertCheck, code: str) -> None:
    with pytest.raises(StaleError) as info:
        signing.open_advert(sealed_advert(), source_peer=PROVIDER.peer_id, check=check)
    assert info.value.code == code


def test_adverts_within_skew_and_newer_seq_pass() -> None:
    data = sealed_advert(seq=2)
    for check in (signing.AdvertCheck(now=NOW - 29), signing.AdvertCheck(now=NOW + 1, last_seq=1)):
        assert signing.open_advert(data, source_peer=PROVIDER.peer_id, check=check).seq == 2


def test_open_advert_refuses_other_messages() -> None:
    data = signing.seal_bytes(m.Cancel(task_id="t", reason=""), PROVIDER)
    with pytest.raises(DecodeError, match="expected an advert"):
        signing.open_advert(data, source_peer=PROVIDER.peer_id, check=CHECK)


def test_signature_is_domain_separated() -> None:
    # A co-signature over the same bytes is not an envelope signature.
    payload = codec.encode(sample_advert(PROVIDER.peer_id))
    sig = PROVIDER.sign(signing.COSIGN_DOMAIN + payload)
    env = codec.encode(m.Envelope(payload=payload, signer=PROVIDER.peer_id, sig=sig))
    with pytest.raises(SignatureError):
        signing.open_envelope(env)


# ---------------------------------------------------------------- co-signed documents
def lease_terms() -> m.LeaseTerms:
    return m.LeaseTerms(
        task_id="t", requester=requester_signer().peer_id, provider=PROVIDER.peer_id,
        spec=sample_spec(), price=1.0, gpus=("GPU-1",), issued_at=NOW, expires_at=NOW + 60,
    )


def test_cosigned_lease_verifies_with_both_signatures() -> None:
    proposed = signing.propose(lease_terms(), m.Lease, PROVIDER, as_provider=True)
    with pytest.raises(SignatureError, match="lacks"):
        signing.verify_cosigned(proposed, m.LeaseTerms)
    assert signing.verify_cosigned(proposed, m.LeaseTerms, require_both=False) == lease_terms()
    signed = signing.countersign(proposed, requester_signer(), as_provider=False)
    assert signing.verify_cosigned(signed, m.LeaseTerms) == lease_terms()


@pytest.mark.parametrize("field", ["terms", "provider_sig", "requester_sig"])
def test_cosigned_lease_tampering(field: str) -> None:
    proposed = signing.propose(lease_terms(), m.Lease, PROVIDER, as_provider=True)
    signed = signing.countersign(proposed, requester_signer(), as_provider=False)
    raw = bytearray(getattr(signed, field))
    raw[-1] ^= 1
    with pytest.raises(ProtocolError):
        signing.verify_cosigned(dataclasses.replace(signed, **{field: bytes(raw)}), m.LeaseTerms)


def test_cosigned_by_the_wrong_party() -> None:
    proposed = signing.propose(lease_terms(), m.Lease, OTHER, as_provider=True)
    with pytest.raises(SignatureError):
        signing.verify_cosigned(proposed, m.LeaseTerms, require_both=False)
