"""The machine builds every message it can (offer, status, lease and receipt terms), the pure builders in
``protocol.terms`` make the same terms apart from a stream, and what the machine recorded is read-only."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import LocalProtocolError, signing
from protocol.messages import Lease, Offer, Receipt, Status, TaskState
from protocol.negotiation import ProviderNegotiation, State, TaskRole
from protocol.terms import make_lease_terms, make_receipt_terms

from .helpers import NOW, TASK_ID, MachinePair, leased_pair, provider_signer, requester_signer, sample_spec


def test_send_offer_offers_the_requested_cpus_and_memory_for_the_request_s_task() -> None:
    pair = MachinePair()
    pair.request()
    [offer] = pair.send(TaskRole.PROVIDER, pair.provider.send_offer(price=2.5, gpus=("GPU-1",), expires_at=NOW + 30))
    spec = sample_spec()
    assert offer == Offer(task_id=TASK_ID, price=2.5, expires_at=NOW + 30, cpus=spec.cpus, memory=spec.memory,
                          gpus=("GPU-1",))
    assert pair.states() == (State.OFFERED, State.OFFERED)


def test_send_offer_needs_a_request() -> None:
    provider = ProviderNegotiation(provider_signer(), requester_signer().peer_id)
    with pytest.raises(LocalProtocolError):
        provider.send_offer(price=1.0, gpus=(), expires_at=NOW)


def test_an_offer_expires_at_its_expiry_on_both_sides() -> None:
    pair = MachinePair()
    pair.request()
    pair.offer()
    assert pair.provider.offer is not None
    expires_at = pair.provider.offer.expires_at
    for machine in (pair.requester, pair.provider):
        assert not machine.offer_expired(expires_at - 0.001)
        assert machine.offer_expired(expires_at)


def test_send_status_needs_a_lease_and_reports_the_task() -> None:
    pair = MachinePair()
    pair.request()
    with pytest.raises(LocalProtocolError, match="may not send 'status'"):
        pair.provider.send_status(TaskState.RUNNING, "too early", at=NOW)
    pair = leased_pair()
    [status] = pair.send(TaskRole.PROVIDER, pair.provider.send_status(TaskState.RUNNING, "x" * 2000, at=NOW + 5))
    assert status == Status(task_id=TASK_ID, state=TaskState.RUNNING, detail="x" * 1024, at=NOW + 5)


def test_the_lease_terms_builder_is_the_machine_s() -> None:
    pair = MachinePair()
    for step in (pair.request, pair.offer, pair.accept):
        step()
    provider = pair.provider
    assert provider.request is not None and provider.offer is not None and provider.accepted is not None
    built = make_lease_terms(provider.request, provider.offer, provider.accepted,
                             provider=provider.provider_id, issued_at=NOW, expires_at=NOW + 60)
    assert built == provider.draft_lease(issued_at=NOW, expires_at=NOW + 60)
    assert (built.requester, built.price, built.gpus) == (pair.requester_signer.peer_id, 2.5, ("GPU-1",))


def test_a_receipt_made_apart_from_the_stream_is_the_one_both_machines_take() -> None:
    pair = leased_pair()
    pair.result()
    lease, lease_terms, result = pair.provider.lease, pair.provider.lease_terms, pair.provider.result
    assert lease is not None and lease_terms is not None and result is not None
    # as a provider's job does when the container ends: no machine at hand
    terms = make_receipt_terms(lease, lease_terms, result, stdout_digest=signing.digest(result.stdout),
                               stderr_digest=signing.digest(result.stderr), cost=0.25, finished_at=NOW + 9)
    assert terms == pair.provider.draft_receipt(stdout_digest=signing.digest(result.stdout),
                                                stderr_digest=signing.digest(result.stderr), cost=0.25,
                                                finished_at=NOW + 9)
    proposal = signing.propose(terms, Receipt, pair.provider_signer, as_provider=True)
    pair.send(TaskRole.PROVIDER, proposal)
    pair.countersign_receipt()
    assert pair.states() == (State.DONE, State.DONE)
    assert pair.requester.receipt_terms == terms
    assert pair.provider.receipt is not None and pair.provider.receipt.terms == proposal.terms



def test_the_drafted_receipt_keeps_staging_time_apart_from_run_time() -> None:
    pair = leased_pair()
    pair.result()
    lease, lease_terms, result = pair.provider.lease, pair.provider.lease_terms, pair.provider.result
    assert lease is not None and lease_terms is not None and result is not None
    drafted = pair.provider.draft_receipt(stdout_digest="", stderr_digest="", cost=0.25, finished_at=NOW + 9,
                                          staging_time=2.5)
    assert drafted.staging_time == 2.5
    assert drafted == make_receipt_terms(lease, lease_terms, result, stdout_digest="", stderr_digest="", cost=0.25,
                                         finished_at=NOW + 9, staging_time=2.5)

@pytest.mark.parametrize("kind", ["lease", "receipt"])
def test_a_countersigned_document_with_other_terms_is_refused_the_same_way(kind: str) -> None:
    pair = leased_pair() if kind == "receipt" else MachinePair()
    steps = ("result", "propose_receipt") if kind == "receipt" else ("request", "offer", "accept", "propose_lease")
    for step in steps:
        getattr(pair, step)()
    proposed: Lease | Receipt | None = (
        pair.requester.proposed_receipt if kind == "receipt" else pair.requester.proposed_lease
    )
    assert proposed is not None
    forged = signing.countersign(dataclasses.replace(proposed, terms=proposed.terms + b"\0"), pair.requester_signer,
                                 as_provider=False)
    with pytest.raises(LocalProtocolError, match=f"terms differ from the proposed {kind}") as info:
        pair.requester.send(forged)
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize(
    "name",
    ["request", "resumed", "offer", "accepted", "rejection", "lease_terms", "proposed_lease", "lease", "result",
     "receipt_terms", "proposed_receipt", "receipt", "cancel_requested", "last_envelope"],
)
def test_what_the_machine_recorded_is_read_only(name: str) -> None:
    pair = leased_pair()
    before = getattr(pair.requester, name)
    with pytest.raises(AttributeError):
        setattr(pair.requester, name, None)
    assert getattr(pair.requester, name) == before
