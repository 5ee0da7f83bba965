"""The negotiation machines driven against each other: every path, every illegal step."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import codec, signing
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    Accept,
    Cancel,
    Lease,
    LeaseTerms,
    Message,
    Receipt,
    ReceiptTerms,
    RejectCode,
    Resume,
    TaskState,
)
from protocol.negotiation import (
    CLOSED,
    CROSSING,
    NEED_DATA,
    STREAM_MESSAGES,
    TERMINAL,
    TRANSITIONS,
    ProviderNegotiation,
    RequesterNegotiation,
    State,
    TaskRole,
)

from .helpers import (
    NOW,
    PATHS,
    TASK_ID,
    MachinePair,
    other_signer,
    pair_in,
    sample_log,
    sample_message,
    sample_offer,
    sample_result,
    sample_status,
    signed_lease,
)

R, P = TaskRole.REQUESTER, TaskRole.PROVIDER


# ---------------------------------------------------------------- paths
def test_happy_path() -> None:
    pair = MachinePair()
    pair.request()
    assert pair.provider.request is not None and pair.provider.task_id == TASK_ID
    assert pair.send(P, sample_offer()) == [sample_offer()]
    pair.accept()
    pair.propose_lease()
    assert pair.states() == (State.LEASE_PROPOSED, State.LEASE_PROPOSED)
    assert pair.requester.lease is None and pair.requester.lease_terms is not None
    pair.countersign_lease()
    assert pair.requester.lease == pair.provider.lease
    assert pair.provider.lease is not None
    terms = signing.verify_cosigned(pair.provider.lease, LeaseTerms)
    assert terms.price == sample_offer().price and terms.gpus == sample_offer().gpus
    assert pair.send(P, sample_status()) == [sample_status()]
    for seq in range(3):
        pair.send(P, sample_log(seq=seq))
    pair.result()
    pair.propose_receipt()
    pair.countersign_receipt()
    assert pair.states() == (State.DONE, State.DONE)
    receipt = pair.provider.receipt
    assert receipt is not None and receipt == pair.requester.receipt
    receipt_terms = signing.verify_cosigned(receipt, ReceiptTerms)
    assert receipt_terms.lease_digest == signing.digest(pair.provider.lease.terms)
    assert receipt_terms.state is TaskState.SUCCEEDED
    # last_envelope is the signed proof of the last message received.
    assert pair.provider.last_envelope is not None
    _, last = signing.open_envelope(pair.provider.last_envelope, expected_signer=pair.requester_signer.peer_id)
    assert last == receipt


def test_reject_on_request_is_terminal_and_kept_as_proof() -> None:
    pair = MachinePair()
    pair.request()
    pair.reject()
    assert pair.states() == (State.REJECTED, State.REJECTED)
    assert pair.requester.rejection is not None and pair.requester.rejection.code is RejectCode.BUSY
    assert pair.requester.last_envelope is not None
    env, msg = signing.open_envelope(pair.requester.last_envelope)
    assert env.signer == pair.provider_signer.peer_id and msg == pair.requester.rejection
    with pytest.raises(LocalProtocolError):
        pair.requester.cancel("too late")


def test_expired_offer() -> None:
    pair = pair_in(State.OFFERED)
    expiry = sample_offer().expires_at
    with pytest.raises(LocalProtocolError) as info:
        pair.requester.accept(now=expiry)
    assert info.value.code == "offer_expired"
    assert pair.requester.state is State.OFFERED  # nothing sent, nothing changed
    # A requester whose clock is behind accepts; the provider checks its own clock.
    pair.send(R, pair.requester.accept(now=expiry - 1))
    assert pair.provider.offer_expired(expiry + 5)
    pair.send(P, pair.provider.reject(RejectCode.OFFER_EXPIRED, "offer expired"))
    assert pair.states() == (State.REJECTED, State.REJECTED)


@pytest.mark.parametrize("state", [State.OFFERED, State.LEASE_PROPOSED])
def test_cancel_before_lease_is_terminal(state: State) -> None:
    pair = pair_in(state)
    pair.cancel()
    assert pair.states() == (State.CANCELLED, State.CANCELLED)
    assert pair.provider.cancel_requested and pair.provider.lease is None


def test_cancel_while_leased() -> None:
    pair = pair_in(State.LEASED)
    pair.cancel()
    assert pair.states() == (State.CANCELLING, State.CANCELLING)
    pair.send(P, sample_status())
    pair.send(P, sample_log())
    pair.result(TaskState.CANCELLED)
    pair.propose_receipt()
    pair.countersign_receipt()
    assert pair.states() == (State.DONE, State.DONE)
    assert pair.requester.receipt_terms is not None
    assert pair.requester.receipt_terms.state is TaskState.CANCELLED


@pytest.mark.parametrize("provider_steps", [("result",), ("result", "propose_receipt")])
def test_cancel_crossing_the_result(provider_steps: tuple[str, ...]) -> None:
    pair = pair_in(State.LEASED)
    cancel = pair.requester.cancel("crossing")  # in flight while the provider finishes
    in_flight = b""
    for step in provider_steps:
        if step == "result":
            in_flight += pair.provider.send(sample_result())
        else:
            terms = pair.provider.draft_receipt(stdout_digest="", stderr_digest="", cost=0, finished_at=NOW)
            in_flight += pair.provider.propose_receipt(terms)
    assert pair.deliver(P, cancel)[0] == Cancel(task_id=TASK_ID, reason="crossing")
    assert pair.provider.cancel_requested
    pair.deliver(R, in_flight)
    if pair.requester.state is State.RESULT:
        pair.propose_receipt()
    pair.countersign_receipt()
    assert pair.states() == (State.DONE, State.DONE)


def test_requester_may_not_cancel_after_the_result() -> None:
    pair = pair_in(State.RESULT)
    with pytest.raises(LocalProtocolError, match="may not send 'cancel' in state RESULT"):
        pair.requester.cancel("late")


def test_cancel_twice_is_refused() -> None:
    pair = pair_in(State.LEASED)
    pair.cancel()
    with pytest.raises(LocalProtocolError):
        pair.requester.cancel("again")
    pair.send(P, sample_result())
    with pytest.raises(RemoteProtocolError, match="may not|cancel"):
        pair.send(R, pair.raw(R, Cancel(task_id=TASK_ID, reason="again")))


def test_resume_path() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.send(R, pair.requester.resume(lease, log_seq=2))
    assert pair.provider.state is State.RESUMING and pair.provider.resumed is not None
    assert pair.provider.resumed.lease_digest == signing.digest(lease.terms)
    with pytest.raises(LocalProtocolError, match="attach_lease"):
        pair.provider.send(sample_status())
    pair.provider.attach_lease(lease)
    with pytest.raises(LocalProtocolError, match="log seq"):
        pair.provider.send(sample_log(seq=1))
    pair.send(P, sample_log(seq=2))
    assert pair.states() == (State.LEASED, State.LEASED)
    pair.result()
    pair.propose_receipt()
    pair.countersign_receipt()
    assert pair.states() == (State.DONE, State.DONE)
    assert pair.requester.receipt == pair.provider.receipt


def test_resume_rejected() -> None:
    pair = MachinePair()
    pair.send(R, pair.requester.resume(signed_lease()))
    pair.send(P, pair.provider.reject(RejectCode.UNKNOWN_TASK, "no such lease"))
    assert pair.states() == (State.REJECTED, State.REJECTED)


def test_attach_lease_must_match_the_resume() -> None:
    lease = signed_lease()
    pair = MachinePair()
    pair.send(R, pair.requester.resume(lease))
    other_terms = dataclasses.replace(signing.verify_cosigned(lease, LeaseTerms), price=9.0)
    other = signing.countersign(
        signing.propose(other_terms, Lease, pair.provider_signer, as_provider=True),
        pair.requester_signer, as_provider=False,
    )
    with pytest.raises(LocalProtocolError, match="not the one"):
        pair.provider.attach_lease(other)
    assert pair.provider.lease is None


def test_resume_needs_a_lease_between_these_peers() -> None:
    lease = signed_lease()
    stranger = RequesterNegotiation(other_signer(), MachinePair().provider_signer.peer_id)
    with pytest.raises(LocalProtocolError, match="other peers"):
        stranger.resume(lease)
    assert stranger.state is State.IDLE and stranger.lease is None
    pair = MachinePair()
    with pytest.raises(LocalProtocolError, match="resume"):
        pair.requester.send(Resume(task_id=TASK_ID, lease_digest=signing.digest(lease.terms), log_seq=0))


# ---------------------------------------------------------------- the table, exhaustively
def legal_step(pair: MachinePair, state: State, sender: TaskRole, msg_type: str) -> None:
    """Perform the table entry (state, sender, msg_type) with a valid message."""
    steps = {
        (R, "cancel"): pair.cancel,
        (R, "accept"): pair.accept,
        (P, "offer"): pair.offer,
        (P, "reject"): pair.reject,
        (P, "status"): lambda: pair.send(P, sample_status()),
        (P, "log"): lambda: pair.send(P, sample_log()),
        (P, "result"): pair.result,
        (P, "lease"): pair.propose_lease,
        (R, "lease"): pair.countersign_lease,
        (P, "receipt"): pair.propose_receipt,
        (R, "receipt"): pair.countersign_receipt,
        (R, "request"): pair.request,
        (R, "resume"): lambda: pair.resume(signed_lease()),
    }
    steps[sender, msg_type]()


@pytest.mark.parametrize(("state", "sender", "msg_type"), sorted(TRANSITIONS))
def test_every_transition_in_the_table(state: State, sender: TaskRole, msg_type: str) -> None:
    pair = pair_in(state)
    legal_step(pair, state, sender, msg_type)
    expected = TRANSITIONS[state, sender, msg_type]
    assert pair.states() == (expected, expected)


STATES = [s for s in State if s is not State.ERROR]
ILLEGAL = [
    (state, sender, cls.TYPE)
    for state in STATES
    for sender in TaskRole
    for cls in STREAM_MESSAGES
    if (state, sender, cls.TYPE) not in TRANSITIONS
] + [(state, sender, "advert") for state in STATES for sender in TaskRole]


def test_paths_reach_every_state() -> None:
    assert set(PATHS) == set(STATES)
    assert TERMINAL == {State.DONE, State.REJECTED, State.CANCELLED, State.ERROR}


@pytest.mark.parametrize(("state", "sender", "msg_type"), ILLEGAL)
def test_every_illegal_transition(state: State, sender: TaskRole, msg_type: str) -> None:
    pair = pair_in(state)
    msg = sample_message(pair, msg_type)
    with pytest.raises(LocalProtocolError, match=f"{sender} may not send '{msg_type}' in state {state}"):
        pair.machine(sender).send(msg)
    assert pair.states() == (state, state)
    if (state, sender, msg_type) in CROSSING:
        return  # legal on receipt only; tested in test_cancel_crossing_the_result
    with pytest.raises(RemoteProtocolError, match=f"{sender} sent '{msg_type}' in state {state}") as info:
        pair.deliver(pair.other(sender).role, pair.raw(sender, msg))
    assert info.value.code == "unexpected_message"
    receiver = pair.other(sender)
    assert receiver.state is State.ERROR
    with pytest.raises(RemoteProtocolError, match="already failed"):
        receiver.next_event()
    with pytest.raises(LocalProtocolError, match="already failed"):
        receiver.send(Cancel(task_id=TASK_ID, reason=""))


# ---------------------------------------------------------------- checks beyond the table
def expect_both(
    pair: MachinePair, sender: TaskRole, msg: Message, match: str, code: str = "invalid_message"
) -> None:
    """``msg`` is refused when sent (LocalProtocolError) and when received (Remote), with ``code``."""
    before = pair.states()
    with pytest.raises(LocalProtocolError, match=match) as local:
        pair.machine(sender).send(msg)
    assert local.value.code == code
    assert pair.states() == before
    with pytest.raises(RemoteProtocolError, match=match) as remote:
        pair.deliver(pair.other(sender).role, pair.raw(sender, msg))
    assert remote.value.code == code
    assert pair.other(sender).state is State.ERROR


def test_other_task_id_is_refused() -> None:
    pair = pair_in(State.LEASED)
    expect_both(pair, P, sample_status(task_id="another"), "is for task 'another'")


def test_request_must_name_the_requester() -> None:
    pair = MachinePair()
    msg = sample_message(pair, "request")
    expect_both(pair, R, dataclasses.replace(msg, requester=other_signer().peer_id), "requester")


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"gpus": ()}, "GPUs"), ({"gpus": ("G", "G")}, "GPU"), ({"cpus": 0.5}, "CPUs"), ({"memory": 1}, "memory")],
)
def test_offer_must_cover_the_request(changes: dict[str, object], match: str) -> None:
    expect_both(pair_in(State.REQUESTED), P, dataclasses.replace(sample_offer(), **changes), match)


def test_accept_must_take_the_offered_price() -> None:
    pair = pair_in(State.OFFERED)
    expect_both(pair, R, Accept(task_id=TASK_ID, price=1.0), "not the offered")


def lease_variant(pair: MachinePair, **changes: object) -> Lease:
    terms = pair.provider.draft_lease(issued_at=NOW, expires_at=NOW + 60)
    return signing.propose(dataclasses.replace(terms, **changes), Lease, pair.provider_signer, as_provider=True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"task_id": "x"}, "another task"),
        ({"requester": "12D3KooWx"}, "another requester"),
        ({"price": 9.0}, "accepted price"),
        ({"gpus": ("GPU-0",)}, "offered GPUs"),
        ({"expires_at": NOW - 1}, "expire"),
    ],
)
def test_lease_terms_must_match_the_negotiation(changes: dict[str, object], match: str) -> None:
    pair = pair_in(State.ACCEPTED)
    expect_both(pair, P, lease_variant(pair, **changes), match)


def test_lease_with_another_spec_is_refused() -> None:
    pair = pair_in(State.ACCEPTED)
    assert pair.provider.request is not None
    spec = dataclasses.replace(pair.provider.request.spec, memory=1 << 30)
    expect_both(pair, P, lease_variant(pair, spec=spec), "spec")


def test_lease_proposal_signatures() -> None:
    pair = pair_in(State.ACCEPTED)
    good = lease_variant(pair)
    unsigned = dataclasses.replace(good, provider_sig=b"")
    expect_both(pair, P, unsigned, "provider's signature")
    pair = pair_in(State.ACCEPTED)
    forged = signing.propose(
        signing.verify_cosigned(good, LeaseTerms, require_both=False), Lease, other_signer(), as_provider=True
    )
    expect_both(pair, P, forged, "does not verify", "bad_signature")
    pair = pair_in(State.ACCEPTED)
    expect_both(pair, P, dataclasses.replace(good, requester_sig=bytes(64)), "no requester signature")


def test_countersigned_lease_must_keep_the_terms() -> None:
    pair = pair_in(State.LEASE_PROPOSED)
    assert pair.requester.lease_terms is not None
    changed = dataclasses.replace(pair.requester.lease_terms, price=0.0)
    resigned = signing.countersign(
        signing.propose(changed, Lease, pair.provider_signer, as_provider=True),
        pair.requester_signer, as_provider=False,
    )
    expect_both(pair, R, resigned, "terms differ")
    pair = pair_in(State.LEASE_PROPOSED)
    assert pair.requester.proposed_lease is not None
    bad_sig = dataclasses.replace(pair.requester.proposed_lease, requester_sig=bytes(64))
    expect_both(pair, R, bad_sig, "does not verify", "bad_signature")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lease_digest": "sha256:00"}, "lease_digest"),
        ({"state": TaskState.FAILED}, "state differs"),
        ({"exit_code": 3}, "exit_code"),
        ({"price": 0.0}, "price"),
        ({"provider": other_signer().peer_id}, "another provider"),
    ],
)
def test_receipt_terms_must_match_lease_and_result(changes: dict[str, object], match: str) -> None:
    pair = pair_in(State.RESULT)
    terms = pair.provider.draft_receipt(stdout_digest="", stderr_digest="", cost=0.0, finished_at=NOW)
    # Signed by whoever the terms name as provider, so that the check under test is reached.
    signer = other_signer() if "provider" in changes else pair.provider_signer
    doc = signing.propose(dataclasses.replace(terms, **changes), Receipt, signer, as_provider=True)
    expect_both(pair, P, doc, match)


def test_countersigned_receipt_must_keep_the_terms() -> None:
    pair = pair_in(State.RECEIPT_PROPOSED)
    assert pair.requester.proposed_receipt is not None
    bad_sig = dataclasses.replace(pair.requester.proposed_receipt, requester_sig=bytes(64))
    expect_both(pair, R, bad_sig, "does not verify", "bad_signature")


def test_result_state_must_be_final() -> None:
    pair = pair_in(State.LEASED)
    expect_both(pair, P, sample_result(state=TaskState.RUNNING), "not final")


def test_helpers_refuse_the_wrong_moment() -> None:
    pair = MachinePair()
    with pytest.raises(LocalProtocolError):
        pair.requester.accept(now=NOW)
    with pytest.raises(LocalProtocolError):
        pair.requester.countersign_lease()
    with pytest.raises(LocalProtocolError):
        pair.requester.countersign_receipt()
    with pytest.raises(LocalProtocolError):
        pair.provider.draft_lease(issued_at=NOW, expires_at=NOW + 1)
    with pytest.raises(LocalProtocolError):
        pair.provider.draft_receipt(stdout_digest="", stderr_digest="", cost=0, finished_at=NOW)
    with pytest.raises(LocalProtocolError):
        pair.provider.attach_lease(signed_lease())


# ---------------------------------------------------------------- bytes and envelopes
def test_envelope_from_another_peer_is_refused() -> None:
    pair = pair_in(State.REQUESTED)
    forged = codec.frame(signing.seal_bytes(sample_offer(), other_signer()))
    with pytest.raises(RemoteProtocolError, match="expected"):
        pair.deliver(R, forged)
    assert pair.requester.state is State.ERROR


def test_tampered_frame_is_refused() -> None:
    pair = pair_in(State.REQUESTED)
    data = bytearray(pair.provider.send(sample_offer()))
    data[-70] ^= 1  # inside the payload
    with pytest.raises(RemoteProtocolError):
        pair.deliver(R, bytes(data))


def test_byte_at_a_time_delivery() -> None:
    pair = pair_in(State.REQUESTED)
    data = pair.provider.send(sample_offer())
    for byte in data[:-1]:
        assert pair.deliver(R, bytes([byte])) == []
    assert pair.deliver(R, data[-1:]) == [sample_offer()]


def test_closed_at_a_frame_boundary_and_inside_a_frame() -> None:
    pair = pair_in(State.LEASED)
    pair.requester.receive_data(b"")
    assert pair.requester.next_event() is CLOSED
    assert pair.requester.state is State.LEASED  # the caller decides (e.g. Resume later)
    pair = pair_in(State.LEASED)
    pair.requester.receive_data(pair.provider.send(sample_status())[:10])
    assert pair.requester.next_event() is NEED_DATA
    pair.requester.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside a frame"):
        pair.requester.next_event()


def test_oversize_frame_header() -> None:
    machine = ProviderNegotiation(MachinePair().provider_signer, "12D3KooWx", max_frame=1024)
    machine.receive_data((1025).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError) as info:
        machine.next_event()
    assert info.value.code == "frame_too_large" and machine.state is State.ERROR


def test_non_stream_message_in_envelope() -> None:
    pair = MachinePair()
    with pytest.raises(RemoteProtocolError, match="'lease_terms'"):
        terms = LeaseTerms(
            task_id=TASK_ID, requester=pair.requester_signer.peer_id, provider=pair.provider_signer.peer_id,
            spec=sample_message(pair, "request").spec, price=1.0, gpus=(), issued_at=0, expires_at=1,  # type: ignore[attr-defined]
        )
        pair.deliver(P, pair.raw(R, terms))


def test_messages_after_the_end_are_refused() -> None:
    pair = pair_in(State.DONE)
    with pytest.raises(RemoteProtocolError, match="in state DONE"):
        pair.deliver(R, pair.raw(P, sample_status()))
