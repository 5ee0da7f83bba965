"""Refusals the path tests leave implicit: missing co-signatures, wire codes, boundaries.

Written against the survivors of a mutation run (scripts/mutation): each test
pins one behaviour that a small change of protocol/negotiation.py kept passing.
"""

from __future__ import annotations

import dataclasses

import pytest

from protocol import codec, signing
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import Cancel, Lease, LeaseTerms, Receipt, RejectCode, Resume
from protocol.negotiation import ProviderNegotiation, RequesterNegotiation, State, TaskRole

from .helpers import (
    NOW,
    TASK_ID,
    MachinePair,
    pair_in,
    sample_log,
    sample_offer,
    sample_spec,
    sample_status,
    signed_lease,
)
from .test_negotiation import expect_both

R, P = TaskRole.REQUESTER, TaskRole.PROVIDER


# ---------------------------------------------------------------- the requester's co-signature
def test_countersigned_lease_without_the_requester_signature_is_refused() -> None:
    pair = pair_in(State.LEASE_PROPOSED)
    proposed = pair.requester.proposed_lease
    assert proposed is not None and not proposed.requester_sig
    expect_both(pair, R, proposed, "lacks the signature", "bad_signature")
    assert pair.requester.lease is None


def test_countersigned_receipt_without_the_requester_signature_is_refused() -> None:
    pair = pair_in(State.RECEIPT_PROPOSED)
    proposed = pair.requester.proposed_receipt
    assert proposed is not None and not proposed.requester_sig
    expect_both(pair, R, proposed, "lacks the signature", "bad_signature")
    assert pair.requester.receipt is None


def test_proposed_receipt_with_a_requester_signature_is_refused() -> None:
    pair = pair_in(State.RESULT)
    terms = pair.provider.draft_receipt(stdout_digest="", stderr_digest="", cost=0.0, finished_at=NOW)
    doc = signing.countersign(
        signing.propose(terms, Receipt, pair.provider_signer, as_provider=True),
        pair.requester_signer, as_provider=False,
    )
    expect_both(pair, P, doc, "no requester signature")
    pair = pair_in(State.RESULT)
    unsigned = dataclasses.replace(doc, provider_sig=b"", requester_sig=b"")
    expect_both(pair, P, unsigned, "provider's signature")


# ---------------------------------------------------------------- wire codes
def test_undecodable_payload_is_malformed_and_the_code_sticks() -> None:
    pair = pair_in(State.REQUESTED)
    with pytest.raises(RemoteProtocolError) as first:
        pair.deliver(R, codec.frame(b"\xc1 not msgpack"))
    assert first.value.code == "malformed"
    with pytest.raises(RemoteProtocolError, match="already failed") as again:
        pair.requester.next_event()
    assert again.value.code == "malformed"
    with pytest.raises(LocalProtocolError, match="already failed"):
        pair.requester.send(Cancel(task_id=TASK_ID, reason=""))


def test_forged_envelope_is_bad_signature() -> None:
    pair = pair_in(State.REQUESTED)
    forged = codec.frame(signing.seal_bytes(sample_offer(), MachinePair().requester_signer))
    with pytest.raises(RemoteProtocolError) as info:
        pair.deliver(R, forged)
    assert info.value.code == "bad_signature" and pair.requester.state is State.ERROR


def test_oversize_header_is_reported_once_then_as_already_failed() -> None:
    machine = ProviderNegotiation(MachinePair().provider_signer, "12D3KooWx", max_frame=64)
    machine.receive_data((65).to_bytes(4, "big"))
    assert machine.state is State.ERROR
    machine.receive_data(b"ignored after the failure")
    with pytest.raises(RemoteProtocolError, match="exceeds") as first:
        machine.next_event()
    assert first.value.code == "frame_too_large" and "already failed" not in str(first.value)
    with pytest.raises(RemoteProtocolError, match="already failed") as again:
        machine.next_event()
    assert again.value.code == "frame_too_large"


def test_a_frame_of_exactly_max_frame_is_read() -> None:
    pair = MachinePair()
    data = pair.requester.send_request(TASK_ID, sample_spec(), now=NOW)
    size = len(data) - codec.HEADER_SIZE
    provider = ProviderNegotiation(pair.provider_signer, pair.requester_signer.peer_id, max_frame=size)
    provider.receive_data(data)
    assert provider.next_event() == pair.requester.request
    small = ProviderNegotiation(pair.provider_signer, pair.requester_signer.peer_id, max_frame=size - 1)
    small.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        small.next_event()
    assert info.value.code == "frame_too_large"


def test_sending_more_than_max_frame_is_refused_and_changes_nothing() -> None:
    pair = pair_in(State.REQUESTED)
    size = len(pair.raw(P, sample_offer())) - codec.HEADER_SIZE
    provider = pair.provider
    provider.max_frame = size - 1
    with pytest.raises(LocalProtocolError, match="exceeds"):
        provider.send(sample_offer())
    assert provider.state is State.REQUESTED and provider.offer is None
    provider.max_frame = size
    assert pair.deliver(R, provider.send(sample_offer())) == [sample_offer()]


# ---------------------------------------------------------------- time and sequence boundaries
def test_offer_expiry_boundary() -> None:
    pair = pair_in(State.REQUESTED)
    assert not pair.provider.offer_expired(NOW + 10**6)  # no offer yet
    pair.offer()
    expiry = sample_offer().expires_at
    for machine in (pair.requester, pair.provider):
        assert machine.offer_expired(expiry) and machine.offer_expired(expiry + 1)
        assert not machine.offer_expired(expiry - 0.001)
    with pytest.raises(LocalProtocolError, match="expired") as info:
        pair.requester.accept(now=expiry)
    assert info.value.code == "offer_expired"
    pair.send(R, pair.requester.accept(now=expiry - 0.001))
    assert pair.states() == (State.ACCEPTED, State.ACCEPTED)


def test_lease_must_expire_after_it_is_issued() -> None:
    pair = pair_in(State.ACCEPTED)
    same = pair.provider.draft_lease(issued_at=NOW, expires_at=NOW)
    doc = signing.propose(same, Lease, pair.provider_signer, as_provider=True)
    expect_both(pair, P, doc, "expire before")
    pair = pair_in(State.ACCEPTED)
    pair.send(P, pair.provider.propose_lease(pair.provider.draft_lease(issued_at=NOW, expires_at=NOW + 0.5)))
    assert pair.states() == (State.LEASE_PROPOSED, State.LEASE_PROPOSED)


def test_resume_starts_at_log_seq_zero_by_default() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.resume(lease)
    assert pair.provider.resumed is not None and pair.provider.resumed.log_seq == 0
    assert pair.send(P, sample_log(seq=0)) == [sample_log(seq=0)]


def test_resumed_log_seq_is_a_lower_bound() -> None:
    pair = MachinePair()
    pair.resume(signed_lease(), log_seq=5)
    expect_both(pair, P, sample_log(seq=4), "log seq 4")
    pair = MachinePair()
    pair.resume(signed_lease(), log_seq=5)
    pair.send(P, sample_log(seq=5))
    pair.send(P, sample_log(seq=9))
    assert pair.states() == (State.LEASED, State.LEASED)


def test_a_failed_resume_forgets_the_lease() -> None:
    lease = signed_lease()
    requester = RequesterNegotiation(MachinePair().requester_signer, MachinePair().provider_signer.peer_id, max_frame=8)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        requester.resume(lease)
    assert requester.lease is None and requester.lease_terms is None and requester.state is State.IDLE


def test_resume_only_opens_a_stream() -> None:
    pair = pair_in(State.REQUESTED)
    with pytest.raises(LocalProtocolError, match="resume opens a stream"):
        pair.requester.resume(signed_lease())
    assert pair.requester.lease is None


def test_resume_must_name_the_lease_digest() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.requester._lease = lease  # forged: what resume() records before it sends (lease is read-only)
    bad = signing.digest(lease.terms + b"x")
    with pytest.raises(LocalProtocolError, match="lease_digest mismatch"):
        pair.requester.send(Resume(task_id=TASK_ID, lease_digest=bad, log_seq=0))
    assert pair.requester.state is State.IDLE


# ---------------------------------------------------------------- helpers refuse the wrong moment
def test_attach_lease_only_once() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.resume(lease)
    with pytest.raises(LocalProtocolError, match="attach_lease answers a Resume"):
        pair.provider.attach_lease(lease)


def test_attach_lease_after_a_rejected_resume_is_refused() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.send(R, pair.requester.resume(lease))
    pair.send(P, pair.provider.reject(RejectCode.UNKNOWN_TASK, "gone"))
    with pytest.raises(LocalProtocolError, match="attach_lease answers a Resume; state is REJECTED"):
        pair.provider.attach_lease(lease)
    assert pair.provider.lease is None


def test_attach_lease_needs_the_resumed_task() -> None:
    lease = signed_lease()
    terms = signing.verify_cosigned(lease, LeaseTerms)
    other = signing.countersign(
        signing.propose(dataclasses.replace(terms, task_id="task-2"), Lease,
                        MachinePair().provider_signer, as_provider=True),
        MachinePair().requester_signer, as_provider=False,
    )
    pair = MachinePair()
    pair.send(R, pair.requester.resume(lease))
    with pytest.raises(LocalProtocolError, match="not the one"):
        pair.provider.attach_lease(other)
    pair.provider.attach_lease(lease)
    assert pair.provider.lease == lease and pair.provider.lease_terms == terms


@pytest.mark.parametrize("state", [State.LEASED, State.DONE])
def test_countersign_only_a_pending_proposal(state: State) -> None:
    pair = pair_in(state)
    with pytest.raises(LocalProtocolError, match="no lease proposal to countersign"):
        pair.requester.countersign_lease()
    if state is State.DONE:
        with pytest.raises(LocalProtocolError, match="no receipt proposal to countersign"):
            pair.requester.countersign_receipt()


def test_only_the_provider_may_propose_and_only_the_requester_countersign() -> None:
    pair = pair_in(State.ACCEPTED)
    terms = pair.provider.draft_lease(issued_at=NOW, expires_at=NOW + 60)
    with pytest.raises(LocalProtocolError, match="may not send 'lease'"):
        pair.requester.send(signing.propose(terms, Lease, pair.requester_signer, as_provider=False))


def test_reject_and_cancel_need_a_task_and_truncate_their_text() -> None:
    pair = MachinePair()
    with pytest.raises(LocalProtocolError, match="nothing to cancel"):
        pair.requester.cancel("x")
    with pytest.raises(LocalProtocolError, match="nothing to reject"):
        pair.provider.reject(RejectCode.BUSY, "x")
    pair.request()
    [reject] = pair.send(P, pair.provider.reject(RejectCode.BUSY, "d" * 5000))
    assert reject.detail == "d" * 1024  # type: ignore[union-attr]
    pair = pair_in(State.OFFERED)
    [cancel] = pair.send(R, pair.requester.cancel("r" * 5000))
    assert cancel == Cancel(task_id=TASK_ID, reason="r" * 1024)


def test_status_before_any_lease_is_refused_as_unexpected() -> None:
    pair = pair_in(State.ACCEPTED)
    with pytest.raises(LocalProtocolError) as info:
        pair.provider.send(sample_status())
    assert info.value.code == "unexpected_message"


def test_received_message_is_recorded_as_last_envelope() -> None:
    pair = pair_in(State.REQUESTED)
    data = pair.provider.send(sample_offer())
    pair.deliver(R, data)
    assert pair.requester.last_envelope == data[codec.HEADER_SIZE:]


@pytest.mark.parametrize("role", list(TaskRole))
def test_a_fresh_machine_holds_nothing(role: TaskRole) -> None:
    machine = MachinePair().machine(role)
    assert machine.state is State.IDLE and machine.task_id is None and machine.cancel_requested is False
    for name in (
        "last_envelope", "request", "resumed", "offer", "accepted", "rejection", "lease_terms",
        "proposed_lease", "lease", "result", "receipt_terms", "proposed_receipt", "receipt",
    ):
        assert getattr(machine, name) is None, name
