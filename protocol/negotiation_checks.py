"""The per-message checks of the task negotiation (``protocol.negotiation``), as pure functions.

Each takes the message and what the machine recorded before it, and raises
``Violation`` (code ``invalid_message`` unless said otherwise) if the message
breaks a rule; it records nothing. ``Negotiation._check_and_record`` calls
them, and turns a ``Violation`` into ``LocalProtocolError`` (a message we are
about to send) or ``RemoteProtocolError`` (one we received). The rules:

- every message carries the task_id of the first one (``Negotiation._apply``);
- TaskRequest.requester is the requester's peer ID;
- Offer holds exactly ``spec.gpus`` distinct GPUs and at least the requested
  CPUs and memory;
- Accept.price == Offer.price (there is no counter-offer: refuse with Cancel);
- gang jobs (``spec.nodes`` ≥ 2, ``protocol.gang``): the request names the
  gang; the Offer carries the provider's overlay key and endpoint exactly when
  the request names a gang; the Accept's roster has ``spec.nodes`` members and,
  at the provider's rank, this provider with the key and endpoint of its Offer
  (a one-node job's Accept has no roster); the lease terms carry the request's
  gang and the accepted roster;
- the proposed Lease is signed by the provider only, and its LeaseTerms name
  this task, the requester and provider peer IDs, the requested spec, the
  accepted price and the offered GPUs (and gang and roster), with
  ``expires_at > issued_at``;
- the countersigned Lease has the very same terms bytes and provider
  signature, and both signatures verify (``signing.verify_cosigned``);
- Status, LogChunk and Result need a lease (a provider answering Resume calls
  ``attach_lease`` first); after a Resume, log chunks start at its log_seq;
- Result.state is final; the requester cancels at most once;
- the proposed Receipt is signed by the provider only, and its ReceiptTerms
  name this task and parties, ``lease_digest == signing.digest(lease.terms)``,
  the lease's price and the Result's state, exit code, output digest and size,
  wall time and GPU seconds; the countersigned Receipt has identical terms
  bytes and both signatures verify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from . import signing
from .errors import ProtocolError
from .messages import (
    FINAL_STATES,
    Accept,
    CoSigned,
    Lease,
    LeaseTerms,
    LogChunk,
    Message,
    Offer,
    Receipt,
    ReceiptTerms,
    Result,
    Resume,
    Status,
    TaskRequest,
)
from .roles import TaskRole

M = TypeVar("M", bound=Message)
D = TypeVar("D", Lease, Receipt)


class Violation(Exception):
    """A broken rule; ``Negotiation._apply`` turns it into Local/RemoteProtocolError."""

    def __init__(self, message: str, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.code = code


def require(ok: bool, why: str) -> None:
    if not ok:
        raise Violation(why)


def verified_terms(doc: CoSigned, terms_type: type[M], *, require_both: bool) -> M:
    """``signing.verify_cosigned``, its errors as a ``Violation`` with their code."""
    try:
        return signing.verify_cosigned(doc, terms_type, require_both=require_both)
    except ProtocolError as exc:
        raise Violation(str(exc), exc.code) from exc


def check_request(msg: TaskRequest, requester_id: str) -> None:
    require(msg.requester == requester_id, "requester is not the requester's peer ID")


def check_resume(msg: Resume, lease: Lease | None) -> None:
    """A Resume the requester sends: for the lease it holds (``resume(lease, log_seq)`` records it)."""
    require(lease is not None, "use resume(lease, log_seq), not send(Resume)")
    assert lease is not None
    require(msg.lease_digest == signing.digest(lease.terms), "lease_digest mismatch")


def check_offer(msg: Offer, request: TaskRequest) -> None:
    spec = request.spec
    require(len(msg.gpus) == spec.gpus, f"offers {len(msg.gpus)} GPUs, {spec.gpus} requested")
    require(len(set(msg.gpus)) == len(msg.gpus), "offers a GPU twice")
    require(msg.cpus >= spec.cpus, "offers fewer CPUs than requested")
    require(msg.memory >= spec.memory, "offers less memory than requested")
    require((msg.overlay is None) == (request.gang is None),
            "a gang member's offer carries its overlay key and endpoint, no other offer does")


def check_accept(msg: Accept, request: TaskRequest, offer: Offer, provider_id: str) -> None:
    """The offered price, and a roster exactly for gang jobs, naming this provider at its rank."""
    require(msg.price == offer.price, f"price {msg.price} is not the offered {offer.price}")
    gang, overlay = request.gang, offer.overlay
    if gang is None or overlay is None:
        require(not msg.roster, "a roster is for gang jobs only")
        return
    require(len(msg.roster) == gang.size, f"roster has {len(msg.roster)} members, the gang {gang.size}")
    mine = msg.roster[gang.rank]
    require(mine.peer == provider_id, f"roster rank {gang.rank} is not this provider")
    require(mine.overlay == overlay, f"roster rank {gang.rank} differs from the offer's key and endpoint")


def check_cosigned(
    msg: D, sender: TaskRole, terms_type: type[M], proposed: D | None, check_terms: Callable[[M], None]
) -> M:
    """A co-signed Lease or Receipt: the provider proposes, the requester countersigns the same bytes."""
    if sender is TaskRole.PROVIDER:
        require(not msg.requester_sig, f"a proposed {msg.TYPE} carries no requester signature")
        require(bool(msg.provider_sig), f"a proposed {msg.TYPE} carries the provider's signature")
        terms = verified_terms(msg, terms_type, require_both=False)
        check_terms(terms)
        return terms
    assert proposed is not None
    require(msg.terms == proposed.terms, f"terms differ from the proposed {msg.TYPE}")
    require(msg.provider_sig == proposed.provider_sig, "provider signature differs")
    return verified_terms(msg, terms_type, require_both=True)


def check_parties(terms: LeaseTerms | ReceiptTerms, task_id: str | None, requester_id: str, provider_id: str) -> None:
    require(terms.task_id == task_id, "terms name another task")
    require(terms.requester == requester_id, "terms name another requester")
    require(terms.provider == provider_id, "terms name another provider")


def check_lease_terms(terms: LeaseTerms, request: TaskRequest, offer: Offer, accepted: Accept) -> None:
    """A proposed lease's terms against the request, the offer and the accept (the parties: ``check_parties``)."""
    require(terms.spec == request.spec, "terms spec differs from the requested spec")
    require(terms.price == accepted.price, "terms price differs from the accepted price")
    require(terms.gpus == offer.gpus, "terms GPUs differ from the offered GPUs")
    require(terms.gang == request.gang, "terms gang differs from the request's")
    require(terms.roster == accepted.roster, "terms roster differs from the accepted roster")
    require(terms.expires_at > terms.issued_at, "terms expire before they are issued")


def check_leased_phase(msg: Status | LogChunk | Result, lease: Lease | None, resumed: Resume | None) -> None:
    require(lease is not None, "no lease: a provider answering Resume calls attach_lease()")
    if isinstance(msg, LogChunk) and resumed is not None:
        require(msg.seq >= resumed.log_seq, f"log seq {msg.seq} < resumed log_seq")
    if isinstance(msg, Result):
        require(msg.state in FINAL_STATES, f"result state {msg.state} is not final")


def check_receipt_terms(terms: ReceiptTerms, lease: Lease, lease_terms: LeaseTerms, result: Result) -> None:
    """A proposed receipt's terms against the lease and the Result (the parties: ``check_parties``)."""
    require(terms.lease_digest == signing.digest(lease.terms), "lease_digest mismatch")
    require(terms.price == lease_terms.price, "price differs from the lease")
    for name in ("state", "exit_code", "output_digest", "output_size", "wall_time", "gpu_seconds"):
        require(getattr(terms, name) == getattr(result, name), f"{name} differs from the result")
