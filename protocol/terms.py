"""The one builder of each co-signed document's terms: ``LeaseTerms`` and ``ReceiptTerms``.

Pure functions of the negotiation's messages, so that both the machine
(``ProviderNegotiation.draft_lease`` / ``draft_receipt``) and code apart from
any stream (a provider's job makes its receipt when the container ends, whichever
stream is open then) build the very terms the machine checks.
"""

from __future__ import annotations

from . import signing
from .messages import Accept, Lease, LeaseTerms, Offer, ReceiptTerms, Result, TaskRequest


def make_lease_terms(
    request: TaskRequest, offer: Offer, accepted: Accept, *, provider: str, issued_at: float, expires_at: float
) -> LeaseTerms:
    """The one builder of LeaseTerms: the request's task, spec and gang, the accepted price and roster,
    the offered GPUs."""
    return LeaseTerms(
        task_id=request.task_id,
        requester=request.requester,
        provider=provider,
        spec=request.spec,
        price=accepted.price,
        gpus=offer.gpus,
        issued_at=issued_at,
        expires_at=expires_at,
        gang=request.gang,
        roster=accepted.roster,
    )


def make_receipt_terms(
    lease: Lease,
    lease_terms: LeaseTerms,
    result: Result,
    *,
    stdout_digest: str,
    stderr_digest: str,
    cost: float,
    finished_at: float,
    staging_time: float = 0.0,
) -> ReceiptTerms:
    """The one builder of ReceiptTerms: the lease's task, parties and price, and the Result's usage.

    A pure function, so that a receipt can be made where the job ends, apart from any stream
    (``ProviderNegotiation.draft_receipt`` is this, fed from the machine's records).
    """
    return ReceiptTerms(
        task_id=lease_terms.task_id,
        requester=lease_terms.requester,
        provider=lease_terms.provider,
        lease_digest=signing.digest(lease.terms),
        state=result.state,
        exit_code=result.exit_code,
        stdout_digest=stdout_digest,
        stderr_digest=stderr_digest,
        output_digest=result.output_digest,
        output_size=result.output_size,
        wall_time=result.wall_time,
        gpu_seconds=result.gpu_seconds,
        price=lease_terms.price,
        cost=cost,
        finished_at=finished_at,
        staging_time=staging_time,
    )

