"""Ending a lease the requester moved on from, so that a job never runs twice.

A provider that stays unreachable longer than ``provider_timeout`` after the
lease is given up: the requester places the task elsewhere. The job may still
be running there (its container outlives the provider's daemon, and a restarted
provider re-attaches it). So the requester records the abandoned lease (a LOST
attempt whose ``signed`` holds the encoded co-signed lease) and ``LeaseEnder``
keeps trying, with backoff and until the lease expires, to reach that provider:

    Resume(lease)  →  Status  →  Cancel(reason "superseded: …")  →  Result  →  Receipt

(only transitions of the negotiation table: Resume, then Cancel once the
provider answered with a status). The provider stops and removes the container,
settles the job ``cancelled`` with the reason in its detail, and proposes the
receipt for the time the job actually ran; the requester checks and countersigns
it. A provider that had already finished the job answers Resume with its Result,
and one that no longer holds the lease with ``Reject(unknown_task)``. Whatever
happened is recorded as a SUPERSEDED attempt (the co-signed receipt, if any, in
its ``signed``); ``Store.superseded_leases`` lists the ones still to end, so a
restarted requester carries on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import trio

from peerd.jobs.leasedjob import countersign_receipt
from peerd.jobs.taskwire import ByteStream, TaskChannel, TaskWireError, single_error
from peerd.p2p.errors import P2PError
from peerd.state.store import Attempt, AttemptOutcome, Store
from protocol import ProtocolError
from protocol.codec import decode_as, encode
from protocol.messages import (
    CANCEL_SUPERSEDED,
    MAX_COUNT,
    Lease,
    LeaseTerms,
    LogChunk,
    Message,
    Receipt,
    Reject,
    Result,
    Status,
)
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer, verify_cosigned

log = logging.getLogger(__name__)

OpenStream = Callable[[str, list[str]], AbstractAsyncContextManager[ByteStream]]

SUPERSEDED_REASON = f"{CANCEL_SUPERSEDED}: the requester placed this task on another provider"

_TRY_ERRORS = (TaskWireError, P2PError, OSError, trio.TooSlowError)
_STREAM_ERRORS = (*_TRY_ERRORS, ProtocolError)


@dataclass(frozen=True)
class Ended:
    """How one superseded lease ended: what to record, and the co-signed receipt if any."""

    detail: str
    receipt: Receipt | None = None
    recorded: bool = False  # already in the store (a receipt is recorded before it is sent)


@dataclass(frozen=True)
class EnderSettings:
    answer_timeout: float = 20.0  # the provider's first answer, and each message after it
    io_timeout: float = 30.0
    first_retry: float = 1.0  # backoff between tries doubles from here ...
    max_retry: float = 20.0  # ... up to this


class LeaseEnder:
    """Tells providers that their lease was superseded; owns one task per lease."""

    def __init__(
        self,
        *,
        signer: Signer,
        store: Store,
        open_stream: OpenStream,
        settings: EnderSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.store = store
        self.open_stream = open_stream
        self.settings = settings
        self.clock = clock
        self._nursery: trio.Nursery | None = None
        self._active: set[tuple[str, str]] = set()  # (task_id, provider) being ended

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for attempt in await self.store.superseded_leases():
                self._start(attempt)
            task_status.started()
            await trio.sleep_forever()

    async def supersede(self, task_id: str, provider: str, lease: Lease, detail: str) -> None:
        """Record that ``lease`` on ``provider`` is given up (write before act), then end it."""
        n = len(await self.store.attempts(task_id)) + 1
        attempt = Attempt(task_id=task_id, n=n, provider=provider, outcome=AttemptOutcome.LOST,
                          reason_code=None, detail=detail[:1024], signed=encode(lease), at=self.clock())
        with trio.CancelScope(shield=True):
            await self.store.add_attempt(attempt)
        self._start(attempt)

    def _start(self, attempt: Attempt) -> None:
        key = (attempt.task_id, attempt.provider)
        if key in self._active or attempt.signed is None:
            return
        try:
            lease = decode_as(attempt.signed, Lease)
            assert isinstance(lease, Lease)
            verify_cosigned(lease, LeaseTerms)
        except ProtocolError as exc:
            log.warning("superseded lease of %s does not verify: %s", attempt.task_id, exc)
            return
        assert self._nursery is not None, "LeaseEnder.run() must be started first"
        self._active.add(key)
        self._nursery.start_soon(self._end, attempt.task_id, attempt.provider, lease)

    async def _end(self, task_id: str, provider: str, lease: Lease) -> None:
        """Try until the provider answers or the lease expires; record what happened."""
        expires_at = verify_cosigned(lease, LeaseTerms).expires_at
        delay = self.settings.first_retry
        ended: Ended | None = None
        try:
            while ended is None and self.clock() < expires_at:
                try:
                    ended = await self._end_once(task_id, provider, lease)
                except _TRY_ERRORS as exc:
                    log.info("could not yet end the superseded lease of %s on %s: %s", task_id, provider[:16], exc)
                except ProtocolError as exc:
                    ended = Ended(f"the provider broke the protocol when told: {exc.code}: {exc}")
                if ended is None:
                    with trio.move_on_after(min(delay, max(expires_at - self.clock(), 0.0))):
                        await trio.sleep_forever()  # back off between tries, never past the lease
                    delay = min(delay * 2, self.settings.max_retry)
            if ended is None:
                ended = Ended("the lease expired before the provider could be reached")
            if not ended.recorded:
                await self._record(task_id, provider, ended)
            log.info("superseded lease of %s on %s ended: %s", task_id, provider[:16], ended.detail)
        finally:
            self._active.discard((task_id, provider))

    async def _record(self, task_id: str, provider: str, ended: Ended) -> None:
        signed = encode(ended.receipt) if ended.receipt is not None else None
        with trio.CancelScope(shield=True):
            n = len(await self.store.attempts(task_id)) + 1
            await self.store.add_attempt(Attempt(
                task_id=task_id, n=n, provider=provider, outcome=AttemptOutcome.SUPERSEDED, reason_code=None,
                detail=ended.detail[:1024], signed=signed, at=self.clock(),
            ))

    async def _end_once(self, task_id: str, provider: str, lease: Lease) -> Ended:
        failure: Exception | None = None
        try:
            async with self.open_stream(provider, []) as stream:
                try:
                    machine = RequesterNegotiation(self.signer, provider)
                    channel = TaskChannel(stream, machine, timeout=self.settings.io_timeout)
                    return await self._tell(channel, task_id, lease)
                except _STREAM_ERRORS as exc:
                    failure = exc
        except _STREAM_ERRORS as exc:
            failure = failure or exc
        except BaseExceptionGroup as group:
            failure = failure or single_error(group, _STREAM_ERRORS)
        assert failure is not None
        raise failure

    async def _tell(self, channel: TaskChannel[RequesterNegotiation], task_id: str, lease: Lease) -> Ended:
        """Resume (asking for no logs), cancel once it is running, take result and receipt."""
        timeout = self.settings.answer_timeout
        with trio.fail_after(timeout):
            await channel.send_frame(channel.machine.resume(lease, MAX_COUNT))
            first: Message = await channel.receive(timeout=timeout)
        if isinstance(first, Reject):
            return Ended(f"the provider no longer holds the lease ({first.code.value}: {first.detail})")
        cancelled = isinstance(first, Status | LogChunk)
        if cancelled:
            await channel.send_frame(channel.machine.cancel(SUPERSEDED_REASON))
        msg = first
        while not isinstance(msg, Result):
            msg = await channel.receive(timeout=timeout)
        proposal = await channel.receive(timeout=timeout)
        assert isinstance(proposal, Receipt)  # the machine checked it against the lease and the result
        countersigned = countersign_receipt(channel.machine)
        receipt = channel.machine.receipt
        assert receipt is not None
        how = "stopped on the provider" if cancelled else "had already ended on the provider"
        ended = Ended(f"{how}: {msg.state.value} after {msg.wall_time:.1f}s ({msg.detail})", receipt)
        await self._record(task_id, channel.machine.peer_id, ended)  # write before act
        try:
            await channel.send_frame(countersigned)
        except _TRY_ERRORS as exc:  # ended all the same; the provider keeps its own proposal
            log.info("the countersigned receipt of %s's superseded lease was not delivered: %s", task_id, exc)
        return Ended(ended.detail, receipt, recorded=True)
