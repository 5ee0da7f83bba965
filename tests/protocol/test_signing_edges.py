"""Edges of protocol/signing.py: key handling, freshness boundaries, co-signing roles.

Each test pins a behaviour a mutation run (scripts/mutation) found unpinned.
Keys are built inside the tests, not at import, so that the code under test
runs while the test does.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from protocol import codec, messages as m, peerid, signing
from protocol.errors import DecodeError, LocalProtocolError, SignatureError, StaleError

from .helpers import NOW, PROVIDER_SEED, REQUESTER_SEED, sample_advert, sample_spec


def lease_terms(requester: signing.Signer, provider: signing.Signer) -> m.LeaseTerms:
    return m.LeaseTerms(
        task_id="t", requester=requester.peer_id, provider=provider.peer_id,
        spec=sample_spec(), price=1.0, gpus=("GPU-1",), issued_at=NOW, expires_at=NOW + 60,
    )


# ---------------------------------------------------------------- keys
def test_signer_keys_and_seeds() -> None:
    signer = signing.Signer.from_seed(PROVIDER_SEED)
    assert signer.private_seed() == PROVIDER_SEED
    assert signer.public_bytes == peerid.public_bytes_from_peer_id(signer.peer_id)
    assert len(signer.public_bytes) == 32
    fresh = signing.Signer.generate()
    assert fresh.peer_id != signer.peer_id and len(fresh.private_seed()) == 32
    assert signing.Signer.from_seed(fresh.private_seed()).peer_id == fresh.peer_id
    sig = fresh.sign(b"data")
    signing.verify_signature(fresh.peer_id, b"data", sig)
    with pytest.raises(SignatureError, match="does not verify") as info:
        signing.verify_signature(signer.peer_id, b"data", sig)
    assert info.value.code == "bad_signature"


def test_a_peer_id_without_a_key_is_a_bad_signature() -> None:
    with pytest.raises(SignatureError, match="key") as info:
        signing.verify_signature("Qm" + "1" * 44, b"data", bytes(64))
    assert info.value.code == "bad_signature"


def test_the_key_cache_is_bounded() -> None:
    signing._KEYS.clear()
    peer_ids = [peerid.peer_id_from_public_bytes(hashlib.sha256(b"%d" % i).digest()) for i in range(4098)]
    for i, pid in enumerate(peer_ids[:4097]):
        signing._key_for(pid)
        assert len(signing._KEYS) == i + 1
    assert signing._key_for(peer_ids[0]) is signing._KEYS[peer_ids[0]]  # a hit adds nothing
    assert len(signing._KEYS) == 4097
    signing._key_for(peer_ids[4097])  # past the bound: the cache starts over
    assert list(signing._KEYS) == [peer_ids[4097]]
    signing._KEYS.clear()


# ---------------------------------------------------------------- envelopes
def test_envelope_binds_the_signer_and_domain() -> None:
    signer = signing.Signer.from_seed(PROVIDER_SEED)
    cancel = m.Cancel(task_id="t", reason="")
    env = signing.seal(cancel, signer)
    assert env.signer == signer.peer_id and env.payload == codec.encode(cancel)
    signing.verify_signature(signer.peer_id, signing.DOMAIN + env.payload, env.sig)
    assert signing.seal_bytes(cancel, signer) == codec.encode(env)
    assert signing.open_envelope(env) == (env, cancel)  # an Envelope is taken as is
    assert signing.open_envelope(codec.encode(env), expected_signer=signer.peer_id) == (env, cancel)
    other = signing.Signer.from_seed(REQUESTER_SEED)
    with pytest.raises(SignatureError, match="expected") as info:
        signing.open_envelope(env, expected_signer=other.peer_id)
    assert info.value.code == "bad_signature"


def test_open_advert_binds_source_signer_and_advert() -> None:
    signer = signing.Signer.from_seed(PROVIDER_SEED)
    data = signing.seal_bytes(sample_advert(signer.peer_id), signer)
    check = signing.AdvertCheck(now=NOW + 1)
    assert signing.open_advert(data, source_peer=None, check=check).peer_id == signer.peer_id
    not_advert = signing.seal_bytes(m.Cancel(task_id="t", reason=""), signer)
    with pytest.raises(DecodeError, match="expected an advert, got 'cancel'") as info:
        signing.open_advert(not_advert, source_peer=signer.peer_id, check=check)
    assert info.value.code == "malformed"
    forged = signing.seal_bytes(sample_advert(signer.peer_id), signing.Signer.from_seed(REQUESTER_SEED))
    with pytest.raises(SignatureError, match="differs from its signer") as sig_info:
        signing.open_advert(forged, source_peer=None, check=check)
    assert sig_info.value.code == "bad_signature"


# ---------------------------------------------------------------- advert freshness
def test_freshness_boundaries() -> None:
    advert = sample_advert("x", seq=5, issued_at=NOW)  # expires at NOW + 60
    assert signing.AdvertCheck(now=NOW).max_skew == signing.DEFAULT_MAX_SKEW == 30.0
    fresh = [
        signing.AdvertCheck(now=NOW + 59.999),
        signing.AdvertCheck(now=NOW - 30),  # issued exactly max_skew ahead
        signing.AdvertCheck(now=NOW - 5, max_skew=5),
        signing.AdvertCheck(now=NOW, last_seq=4),
        signing.AdvertCheck(now=NOW, last_seq=None),
    ]
    for check in fresh:
        signing.check_advert_fresh(advert, check)
    stale = [
        (signing.AdvertCheck(now=NOW + 60), "expired", "expired 0.0s ago"),
        (signing.AdvertCheck(now=NOW + 70), "expired", "expired 10.0s ago"),
        (signing.AdvertCheck(now=NOW - 30.5), "future", "issued 30.5s in the future"),
        (signing.AdvertCheck(now=NOW - 5.5, max_skew=5), "future", "issued 5.5s in the future"),
        (signing.AdvertCheck(now=NOW, last_seq=5), "replayed", "seq 5 is not newer than 5"),
        (signing.AdvertCheck(now=NOW, last_seq=6), "replayed", "seq 5 is not newer than 6"),
    ]
    for check, code, text in stale:
        with pytest.raises(StaleError, match=text) as info:
            signing.check_advert_fresh(advert, check)
        assert info.value.code == code


# ---------------------------------------------------------------- co-signed documents
def test_digest() -> None:
    assert signing.digest(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_propose_and_countersign_in_either_role() -> None:
    requester = signing.Signer.from_seed(REQUESTER_SEED)
    provider = signing.Signer.from_seed(PROVIDER_SEED)
    terms = lease_terms(requester, provider)
    raw = codec.encode(terms)
    by_requester = signing.propose(terms, m.Lease, requester, as_provider=False)
    assert by_requester.terms == raw and by_requester.provider_sig == b""
    signing.verify_signature(requester.peer_id, signing.COSIGN_DOMAIN + raw, by_requester.requester_sig)
    assert signing.verify_cosigned(by_requester, m.LeaseTerms, require_both=False) == terms
    with pytest.raises(SignatureError, match="lacks the signature") as info:
        signing.verify_cosigned(by_requester, m.LeaseTerms)
    assert info.value.code == "bad_signature"
    both = signing.countersign(by_requester, provider, as_provider=True)
    assert both.requester_sig == by_requester.requester_sig
    signing.verify_signature(provider.peer_id, signing.COSIGN_DOMAIN + raw, both.provider_sig)
    assert signing.verify_cosigned(both, m.LeaseTerms, require_both=True) == terms
    # Signatures by the wrong party, in either slot, do not verify.
    swapped = dataclasses.replace(both, provider_sig=both.requester_sig, requester_sig=both.provider_sig)
    with pytest.raises(SignatureError):
        signing.verify_cosigned(swapped, m.LeaseTerms, require_both=False)


def test_cosigned_terms_must_name_both_parties() -> None:
    signer = signing.Signer.from_seed(PROVIDER_SEED)
    doc = signing.propose(m.Cancel(task_id="t", reason=""), m.Lease, signer, as_provider=True)
    with pytest.raises(LocalProtocolError, match="Cancel names no provider and requester"):
        signing.verify_cosigned(doc, m.Cancel, require_both=False)
    with pytest.raises(DecodeError, match="expected 'lease_terms'"):
        signing.verify_cosigned(doc, m.LeaseTerms)


def test_cosigned_terms_naming_one_party_only_are_refused() -> None:
    signer = signing.Signer.from_seed(REQUESTER_SEED)
    request = m.TaskRequest(task_id="t", requester=signer.peer_id, spec=sample_spec(), sent_at=NOW)
    doc = signing.propose(request, m.Lease, signer, as_provider=True)
    with pytest.raises(LocalProtocolError, match="TaskRequest names no provider and requester"):
        signing.verify_cosigned(doc, m.TaskRequest, require_both=False)
