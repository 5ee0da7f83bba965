"""Turns stored records into the control socket's views (plain dicts). Pure."""

from __future__ import annotations

from peerd.control.ops import (
    AttemptView,
    ObservationView,
    PeerView,
    RankView,
    ReceiptView,
    ReputationView,
    TaskView,
)
from peerd.market.reputation import Observation, Standing, Tally
from peerd.state.store import Attempt, ResultRecord, TaskRecord
from protocol import ProtocolError, encode
from protocol.messages import Advert, Receipt, ReceiptTerms
from protocol.schema import Value
from protocol.signing import verify_cosigned


def receipt_view(receipt: Receipt) -> ReceiptView:
    try:
        terms = verify_cosigned(receipt, ReceiptTerms)
        verified = True
    except ProtocolError:
        terms = verify_cosigned(receipt, ReceiptTerms, require_both=False)
        verified = False
    return ReceiptView(
        task_id=terms.task_id,
        provider=terms.provider,
        requester=terms.requester,
        cost=terms.cost,
        state=terms.state.value,
        verified=verified,
        cosigned=encode(receipt).hex(),
        finished_at=terms.finished_at,
    )


def attempt_view(attempt: Attempt) -> AttemptView:
    return AttemptView(
        provider=attempt.provider,
        outcome=attempt.outcome.value,
        reason=attempt.reason_code.value if attempt.reason_code else "",
        detail=attempt.detail,
    )


def task_view(
    record: TaskRecord,
    attempts: list[Attempt],
    result: ResultRecord | None,
    receipt: Receipt | None,
    *,
    with_output: bool = True,
) -> TaskView:
    output = result.result if result and with_output else None
    return TaskView(
        task_id=record.task_id,
        state=record.state.value,
        exit_code=result.result.exit_code if result else record.exit_code,
        stdout=output.stdout.decode("utf-8", "replace") if output else "",
        stderr=output.stderr.decode("utf-8", "replace") if output else "",
        provider=record.provider,
        attempts=[attempt_view(a) for a in attempts],
        receipt=receipt_view(receipt) if receipt else None,
        created_at=record.created_at,
        updated_at=record.updated_at,
        spec=record.spec.to_wire(),  # type: ignore[typeddict-item]
        role=record.role.value,
        detail=_with_pruned(record.detail, result),
    )


def rank_view(rank: int, record: TaskRecord, result: ResultRecord | None, receipt: Receipt | None) -> RankView:
    output = result.result if result else None
    return RankView(
        rank=rank, task_id=record.task_id, provider=record.provider, state=record.state.value,
        exit_code=output.exit_code if output else record.exit_code,
        stdout=output.stdout.decode("utf-8", "replace") if output else "",
        stderr=output.stderr.decode("utf-8", "replace") if output else "",
        receipt=receipt_view(receipt) if receipt else None,
    )


def _with_pruned(detail: str, result: ResultRecord | None) -> str:
    """Say so when retention emptied the stored output (the rest of the record is intact)."""
    if result is None or not result.pruned:
        return detail
    note = "output pruned by retention"
    return f"{detail}; {note}" if detail else note


def peer_view(advert: Advert, addrs: list[str]) -> PeerView:
    wire: dict[str, Value] = advert.to_wire()  # type: ignore[assignment]
    wire.pop("v", None)
    wire.pop("t", None)
    return PeerView(peer_id=advert.peer_id, addrs=addrs, advert=wire)


def reputation_view(standing: Standing, tally: Tally | None) -> ReputationView:
    return ReputationView(
        score=round(standing.score, 4),
        newcomer=standing.newcomer,
        distrusted=standing.distrusted,
        counts={event.value: n for event, n in sorted(tally.counts.items())} if tally else {},
        latency=None if tally is None or tally.latency is None else round(tally.latency, 3),
        last_at=tally.last_at if tally else None,
    )


def observation_view(obs: Observation) -> ObservationView:
    return ObservationView(event=obs.event.value, task_id=obs.task_id, at=obs.at, latency=obs.latency)
