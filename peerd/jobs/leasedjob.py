"""One leased job on the provider side, from container start to receipt.

A ``LeasedJob`` outlives the stream that created it: the requester may lose
its connection and come back with ``Resume``. It keeps the log chunks as they
come (bounded, numbered so a resumed stream continues where it stopped), the
``Result`` once the container ended, and the receipt (first signed by the
provider alone, later by both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from peerd.executor.contract import RunOutcome, RunOutcomeState
from protocol import LocalProtocolError, ProtocolError
from protocol.messages import (
    Lease,
    LeaseTerms,
    LogChunk,
    LogStream,
    Receipt,
    ReceiptTerms,
    Result,
    TaskState,
)
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer, digest, propose
from protocol.terms import make_receipt_terms

MAX_CHUNK = 60 << 10

OUTCOME_STATES: dict[RunOutcomeState, TaskState] = {
    RunOutcomeState.SUCCEEDED: TaskState.SUCCEEDED,
    RunOutcomeState.FAILED: TaskState.FAILED,
    RunOutcomeState.TIMEOUT: TaskState.TIMEOUT,
    RunOutcomeState.OOM: TaskState.OOM,
    RunOutcomeState.CANCELLED: TaskState.CANCELLED,
    RunOutcomeState.LOST: TaskState.LOST,
}


def cost_of(price_per_hour: float, wall_time: float) -> float:
    return price_per_hour * wall_time / 3600.0


def result_from_outcome(outcome: RunOutcome, *, interrupted: bool = False) -> Result:
    state = TaskState.INTERRUPTED if interrupted else OUTCOME_STATES[outcome.state]
    digest_text = f"sha256:{outcome.output_digest}" if outcome.output_digest else ""
    return Result(
        task_id=outcome.task_id,
        state=state,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        output_digest=digest_text,
        output_size=outcome.output_size,
        wall_time=max(outcome.wall_time, 0.0),
        gpu_seconds=max(outcome.gpu_seconds, 0.0),
        detail=outcome.detail[:1024],
    )


def failed_result(task_id: str, state: TaskState, detail: str) -> Result:
    return Result(
        task_id=task_id, state=state, exit_code=None, stdout=b"", stderr=b"",
        output_digest="", output_size=0, wall_time=0.0, gpu_seconds=0.0, detail=detail[:1024],
    )


def receipt_terms(
    lease: Lease, terms: LeaseTerms, result: Result, finished_at: float, staging_time: float = 0.0
) -> ReceiptTerms:
    """The receipt both parties sign; digests bind it to the exact result bytes, the cost is price × wall time."""
    return make_receipt_terms(
        lease, terms, result,
        stdout_digest=digest(result.stdout), stderr_digest=digest(result.stderr),
        cost=cost_of(terms.price, result.wall_time), finished_at=finished_at, staging_time=staging_time,
    )


def countersign_receipt(machine: RequesterNegotiation) -> bytes:
    """The requester's side: beyond the machine's checks, the proposed receipt must carry the digests
    and cost of the result it follows; then the machine countersigns it (``machine.receipt``) and
    returns the frame to send. ``ProtocolError`` if it does not match."""
    offered, lease, terms, result = machine.receipt_terms, machine.lease, machine.lease_terms, machine.result
    if offered is None or lease is None or terms is None or result is None:
        raise LocalProtocolError(f"no receipt proposal to countersign in state {machine.state}")
    # staging_time is the provider's own measure (as wall_time is, which the result carries)
    if offered != receipt_terms(lease, terms, result, offered.finished_at, offered.staging_time):
        raise ProtocolError("the receipt does not match the result (digest, usage or price differ)")
    return machine.countersign_receipt()


@dataclass
class LeasedJob:
    """State shared between the job's runner and every stream that serves it."""

    terms: LeaseTerms
    lease: Lease
    max_log_bytes: int = 1 << 20
    logs: list[LogChunk] = field(default_factory=list)
    first_seq: int = 0
    log_bytes: int = 0
    result: Result | None = None
    receipt: Receipt | None = None
    persist: bool = True  # False for a --local task: the requester side owns its record
    stop_reason: str = ""  # "cancelled" or "interrupted" once a stop was asked
    staging: bool = False  # fetching and writing the inputs (peerd.data.jobdata), before the container starts
    staging_time: float = 0.0  # seconds that took; in the receipt apart from wall_time
    _changed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def task_id(self) -> str:
        return self.terms.task_id

    @property
    def lease_bytes(self) -> bytes:
        return self.lease.terms

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.logs)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def wake(self) -> None:
        """Tell the streams serving this job that something changed (e.g. staging ended)."""
        self._wake()

    @property
    def phase(self) -> TaskState:
        """What a status message says the job is doing: staging its inputs, or running."""
        return TaskState.STAGING if self.staging else TaskState.RUNNING

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def add_output(self, stream: str, data: bytes) -> None:
        kind = LogStream(stream)
        for start in range(0, len(data), MAX_CHUNK):
            piece = data[start:start + MAX_CHUNK]
            self.logs.append(LogChunk(task_id=self.task_id, stream=kind, seq=self.next_seq, data=piece))
            self.log_bytes += len(piece)
        while self.log_bytes > self.max_log_bytes and len(self.logs) > 1:
            dropped = self.logs.pop(0)
            self.log_bytes -= len(dropped.data)
            self.first_seq += 1
        self._wake()

    def chunks_from(self, seq: int) -> list[LogChunk]:
        start = max(seq - self.first_seq, 0)
        return self.logs[start:]

    def finish(self, result: Result, signer: Signer, finished_at: float) -> ReceiptTerms:
        """Record the result and the provider-signed receipt proposal."""
        terms = receipt_terms(self.lease, self.terms, result, finished_at, self.staging_time)
        self.result = result
        self.receipt = propose(terms, Receipt, signer, as_provider=True)
        self.done.set()
        self._wake()
        return terms
