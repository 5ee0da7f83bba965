"""The peer table: every check an advert must pass, expiry, queries."""

from __future__ import annotations

import dataclasses

from peerd.market.peertable import AdvertVerdict, PeerTable, TableLimits, TokenBucket
from protocol.codec import encode
from protocol.messages import Envelope, JobSpec, NodeRole
from protocol.signing import Signer, seal_bytes
from tests.market.test_market import advert as make_advert

NOW = 10_000.0


def signed(signer: Signer, seq: int = 1, *, now: float = NOW, ttl: float = 300.0, **changes: object) -> bytes:
    ad = make_advert(signer.peer_id, seq=seq, issued_at=now, expires_at=now + ttl, **changes)
    return seal_bytes(ad, signer)


def table(**limits: float) -> PeerTable:
    return PeerTable("SELF", TableLimits(**limits))  # type: ignore[arg-type]


def test_valid_advert_is_accepted_and_queryable() -> None:
    alice = Signer.generate()
    t = table()
    data = signed(alice, addrs=("/ip4/127.0.0.1/tcp/1",))
    assert t.ingest(data, source=alice.peer_id, now=NOW) is AdvertVerdict.ACCEPTED
    entry = t.get(alice.peer_id, NOW)
    assert entry is not None
    assert entry.envelope == data
    assert entry.addrs == ("/ip4/127.0.0.1/tcp/1",)
    assert entry.received_at == NOW
    assert entry.expires_at == NOW + 300.0
    assert t.counters["accepted"] == 1


def test_oversized_advert_is_dropped_before_decoding() -> None:
    t = table(max_size=64)
    assert t.ingest(b"\x00" * 65, source="X", now=NOW) is AdvertVerdict.TOO_LARGE
    assert t.counters["too_large"] == 1 and t.counters["malformed"] == 0


def test_garbage_is_malformed_and_never_raises() -> None:
    t = table()
    for junk in (b"", b"\xc1", encode(make_advert("x")), b"\x93\x01\x02\x03"):
        assert t.ingest(junk, source=None, now=NOW) is AdvertVerdict.MALFORMED
    assert t.counters["malformed"] == 4


def test_forged_signature_is_rejected() -> None:
    alice = Signer.generate()
    env = Envelope(payload=encode(make_advert(alice.peer_id, seq=1, issued_at=NOW, expires_at=NOW + 60)),
                   signer=alice.peer_id, sig=b"\x01" * 64)
    t = table()
    assert t.ingest(encode(env), source=alice.peer_id, now=NOW) is AdvertVerdict.BAD_SIGNATURE
    assert t.get(alice.peer_id, NOW) is None


def test_advert_about_another_peer_is_rejected() -> None:
    alice, bob = Signer.generate(), Signer.generate()
    ad = make_advert(bob.peer_id, seq=1, issued_at=NOW, expires_at=NOW + 60)
    t = table()
    assert t.ingest(seal_bytes(ad, alice), source=alice.peer_id, now=NOW) is AdvertVerdict.BAD_SIGNATURE


def test_signer_must_be_the_gossip_source() -> None:
    alice, mallory = Signer.generate(), Signer.generate()
    t = table()
    assert t.ingest(signed(alice), source=mallory.peer_id, now=NOW) is AdvertVerdict.WRONG_SOURCE
    assert t.get(alice.peer_id, NOW) is None


def test_direct_sync_needs_no_source_but_still_a_valid_signature() -> None:
    alice = Signer.generate()
    t = table()
    assert t.ingest(signed(alice), source=None, now=NOW) is AdvertVerdict.ACCEPTED


def test_expired_and_future_adverts_are_rejected() -> None:
    alice = Signer.generate()
    t = table(max_skew=30.0)
    assert t.ingest(signed(alice, now=NOW - 400), source=None, now=NOW) is AdvertVerdict.EXPIRED
    assert t.ingest(signed(alice, now=NOW + 31), source=None, now=NOW) is AdvertVerdict.FUTURE
    assert t.ingest(signed(alice, now=NOW + 29), source=None, now=NOW) is AdvertVerdict.ACCEPTED


def test_seq_must_increase_and_identical_bytes_are_duplicates() -> None:
    alice = Signer.generate()
    t = table()
    second = signed(alice, seq=2)
    assert t.ingest(second, source=alice.peer_id, now=NOW) is AdvertVerdict.ACCEPTED
    assert t.ingest(second, source=alice.peer_id, now=NOW + 1) is AdvertVerdict.DUPLICATE
    assert t.ingest(signed(alice, seq=1, now=NOW + 1), source=alice.peer_id, now=NOW + 1) is AdvertVerdict.REPLAYED
    assert t.ingest(signed(alice, seq=2, now=NOW + 1), source=alice.peer_id, now=NOW + 1) is AdvertVerdict.REPLAYED
    third = signed(alice, seq=3, now=NOW + 2, free_cpus=1.0)
    assert t.ingest(third, source=alice.peer_id, now=NOW + 2) is AdvertVerdict.ACCEPTED
    entry = t.get(alice.peer_id, NOW + 2)
    assert entry is not None and entry.advert.seq == 3 and entry.advert.free_cpus == 1.0
    assert t.counters["replayed"] == 2 and t.counters["duplicate"] == 1


def test_own_adverts_are_ignored() -> None:
    me = Signer.generate()
    t = PeerTable(me.peer_id)
    assert t.ingest(signed(me), source=me.peer_id, now=NOW) is AdvertVerdict.OWN
    assert t.ingest(signed(me), source=None, now=NOW) is AdvertVerdict.OWN
    assert len(t) == 0


def test_flood_from_one_source_is_rate_limited_before_verification() -> None:
    alice = Signer.generate()
    t = table(rate=1.0, burst=3.0)
    junk = b"\x00" * 10
    outcomes = [t.ingest(junk, source=alice.peer_id, now=NOW) for _ in range(5)]
    assert outcomes == [AdvertVerdict.MALFORMED] * 3 + [AdvertVerdict.RATE_LIMITED] * 2
    # another source is not affected; the bucket refills with time
    assert t.ingest(signed(Signer.generate()), source=None, now=NOW) is AdvertVerdict.ACCEPTED
    assert t.ingest(signed(alice), source=alice.peer_id, now=NOW + 1.0) is AdvertVerdict.ACCEPTED


def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    b = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert b.full(100.0)


def test_entries_expire() -> None:
    alice, bob = Signer.generate(), Signer.generate()
    t = table()
    t.ingest(signed(alice, ttl=10), source=None, now=NOW)
    t.ingest(signed(bob, ttl=100), source=None, now=NOW)
    assert t.next_expiry() == NOW + 10
    assert t.peer_ids(NOW + 9) == {alice.peer_id, bob.peer_id}
    assert t.get(alice.peer_id, NOW + 10) is None
    assert t.expire(NOW + 10) == [alice.peer_id]
    assert len(t) == 1


def test_entry_lifetime_is_capped_by_max_ttl() -> None:
    alice = Signer.generate()
    t = table(max_ttl=60.0)
    t.ingest(signed(alice, ttl=3600), source=None, now=NOW)
    entry = t.get(alice.peer_id, NOW)
    assert entry is not None and entry.expires_at == NOW + 60.0


def test_table_full_rejects_new_peers_but_updates_known_ones() -> None:
    alice, bob = Signer.generate(), Signer.generate()
    t = table(max_entries=1)
    assert t.ingest(signed(alice), source=None, now=NOW) is AdvertVerdict.ACCEPTED
    assert t.ingest(signed(bob), source=None, now=NOW) is AdvertVerdict.TABLE_FULL
    assert t.ingest(signed(alice, seq=2), source=None, now=NOW) is AdvertVerdict.ACCEPTED


def test_candidates_filter_exclude_and_rank() -> None:
    t = table()
    signers = {name: Signer.generate() for name in ("cheap", "dear", "drain", "gone")}
    t.ingest(signed(signers["cheap"], price_cpu_hour=0.001), source=None, now=NOW)
    t.ingest(signed(signers["dear"], price_cpu_hour=0.1), source=None, now=NOW)
    t.ingest(signed(signers["drain"], draining=True), source=None, now=NOW)
    t.ingest(signed(signers["gone"], ttl=5), source=None, now=NOW)
    job = JobSpec(image="busybox", command=("true",))
    ids = [e.peer_id for e in t.candidates(job, NOW + 10)]
    assert ids == [signers["cheap"].peer_id, signers["dear"].peer_id]
    ids = [e.peer_id for e in t.candidates(job, NOW + 10, exclude={signers["cheap"].peer_id})]
    assert ids == [signers["dear"].peer_id]
    assert t.candidates(dataclasses.replace(job, cpus=100.0), NOW) == []


def test_snapshot_is_plain_values() -> None:
    alice = Signer.generate()
    t = table()
    t.ingest(signed(alice, role=NodeRole.PROVIDER), source=None, now=NOW)
    (row,) = t.snapshot(NOW + 1)
    assert row["peer_id"] == alice.peer_id
    assert row["role"] == "provider"
    assert row["age"] == 1.0 and row["expires_in"] == 299.0
    assert isinstance(row["gpus"], list)


def test_envelopes_newest_first_and_limited() -> None:
    t = table()
    a, b = Signer.generate(), Signer.generate()
    da, db = signed(a), signed(b)
    t.ingest(da, source=None, now=NOW)
    t.ingest(db, source=None, now=NOW + 1)
    assert t.envelopes(NOW + 2, limit=10) == [db, da]
    assert t.envelopes(NOW + 2, limit=1) == [db]
    assert t.envelopes(NOW + 2, limit=10, exclude={b.peer_id}) == [da]


def test_all_outcomes_have_counters() -> None:
    assert set(table().counters) == {o.value for o in AdvertVerdict}
