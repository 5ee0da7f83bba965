"""The requester side: place a job on another host and see it through.

``Requester.submit`` records the task and starts placement in the requester's
nursery. Placement ranks candidates from the peer table (never this node
unless the user asked for ``local``), negotiates with the best, and on a
reject, a timeout or a lost provider tries the next, within
``max_attempts`` and ``placement_deadline``. Every attempt is recorded with
its outcome and reason, so "why wasn't my job placed?" always has an answer.
A provider that vanishes after the lease is given one chance to be resumed
before the job moves on; the lease it leaves behind is then ended on that
provider when it can be reached again (``peerd.jobs.supersede``), so the job does
not run twice. After a restart, unfinished tasks are resumed (leased) or placed
again (not yet leased), and leases still to end are taken up again. A gang job
(``spec.nodes`` ≥ 2) is placed and run by ``peerd.jobs.gang``.

Deadlines (placement, re-attaching) are on trio's clock; the wall clock
(``clock``) only stamps what is signed or recorded, and is compared with
signed times (advert and offer expiry).
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from peerd.jobs.attemptlog import describe, next_attempt, not_placed_reason
from peerd.jobs.gang import GangPlacer
from peerd.jobs.leasedjob import countersign_receipt
from peerd.jobs.queue import NO_QUEUE, PlacementQueue, QueueTerms
from peerd.jobs.supersede import EnderSettings, LeaseEnder, OpenStream
from peerd.jobs.taskwire import ByteStream, PeerTimeout, TaskChannel, TaskWireError, single_error
from peerd.jobs.tracking import TaskTracker
from peerd.p2p.errors import P2PError
from peerd.state.store import AttemptOutcome, ResultRecord, Store, TaskRecord, TaskRole
from protocol import LocalProtocolError, ProtocolError
from protocol.messages import (
    TRANSIENT_REJECTS,
    JobSpec,
    Lease,
    LogChunk,
    Message,
    Offer,
    Receipt,
    ReceiptTerms,
    Reject,
    RejectCode,
    Result,
    Status,
    TaskState,
)
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer

log = logging.getLogger(__name__)

# Answers that mean "no room at this provider now": a task worth queueing (an offer that lapsed, too).
_NOT_NOW = frozenset(code.value for code in TRANSIENT_REJECTS | {RejectCode.OFFER_EXPIRED})


@dataclass(frozen=True)
class Candidate:
    peer_id: str
    addrs: list[str]


CandidateSource = Callable[[JobSpec, float, bool], list[Candidate]]


class InputShares(Protocol):
    """A task's input chunks pinned for another task too: each rank of a gang fetches under its own lease."""

    async def share_inputs(self, task_id: str, other: str) -> None: ...

    async def unshare_inputs(self, other: str) -> None: ...


@dataclass(frozen=True)
class RequesterSettings:
    max_attempts: int = 3
    placement_deadline: float = 60.0
    provider_timeout: float = 20.0
    io_timeout: float = 30.0
    peer_wait: float = 10.0  # how long to wait for adverts when the peer table is empty
    # How long a task may wait for room by default (``submit --queue-timeout``); 0: it never waits.
    # The daemon's default is ``[requester] queue_timeout``; this component's default keeps the old way.
    queue_timeout: float = 0.0
    placing_at_once: int = 8  # tasks negotiating at once (the queue's turns)


class Ending(enum.Enum):
    """How one attempt at one provider ended, for the round that made it."""

    FINAL = "final"  # the task reached a final state through it
    NOT_NOW = "not_now"  # the provider has no room now (busy, no capacity, draining, unreachable): worth waiting for
    NEVER = "never"  # the provider refused this job for a reason that will not change


class AttemptFailed(Exception):
    """Internal: one attempt ended without a result; carries what to record."""

    def __init__(self, outcome: AttemptOutcome, code: str, detail: str, signed: bytes | None = None) -> None:
        super().__init__(detail)
        self.outcome, self.code, self.detail, self.signed = outcome, code, detail, signed


_ATTEMPT_ERRORS = (AttemptFailed, trio.TooSlowError, ProtocolError, TaskWireError, P2PError, OSError)

Channel = TaskChannel[RequesterNegotiation]


class Requester:
    def __init__(
        self,
        *,
        signer: Signer,
        store: Store,
        tracker: TaskTracker,
        candidates: CandidateSource,
        open_stream: OpenStream,
        settings: RequesterSettings,
        all_providers: CandidateSource | None = None,
        could_run: CandidateSource | None = None,
        peers_changed: Callable[[], Awaitable[object]] | None = None,
        inputs: InputShares | None = None,
        on_negotiated: Callable[[float], None] | None = None,
        on_settled: Callable[[], Awaitable[object]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.store = store
        self.tracker = tracker
        self.candidates = candidates
        self.all_providers = all_providers
        self.could_run = could_run  # providers that could run the job once they have room (worth queueing for)
        self.peers_changed = peers_changed  # returns once the peer table took another advert
        self.inputs = inputs  # a gang's inputs, pinned for each rank (``peerd.data.requestdata``)
        self.on_negotiated = on_negotiated  # seconds from request sent to lease co-signed
        self.on_settled = on_settled  # awaited before a settled task's final state is visible
        self.open_stream = open_stream
        self.settings = settings
        self.clock = clock
        self._nursery: trio.Nursery | None = None
        self._cancel: dict[str, Callable[[str], Awaitable[None]]] = {}
        self._retry_same: set[str] = set()  # tasks whose last provider may be asked again
        self.superseded = LeaseEnder(
            signer=signer, store=store, open_stream=open_stream, clock=clock,
            settings=EnderSettings(answer_timeout=settings.provider_timeout, io_timeout=settings.io_timeout,
                                   max_retry=settings.provider_timeout),
        )
        self.gangs = GangPlacer(self)
        self.queue = PlacementQueue(at_once=settings.placing_at_once)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.superseded.run)
            await nursery.start(self.queue.run)
            if self.peers_changed is not None:
                nursery.start_soon(self._wake_on_adverts, self.peers_changed)
            for record in await self.store.unfinished_tasks(TaskRole.REQUESTER):  # oldest first: queue order
                if record.spec.nodes > 1 and await self.store.gang_of(record.task_id) is not None:
                    continue  # a gang's rank: its gang task answers for it
                if record.state in (TaskState.PLACING, TaskState.QUEUED, TaskState.PENDING):
                    terms = await self._queue_terms(record.task_id)
                    self.queue.join(record.task_id, terms.priority)
                else:
                    terms = NO_QUEUE
                work = self.gangs.recover(record) if record.spec.nodes > 1 else self._recover(record, terms)
                nursery.start_soon(self._guarded, record.task_id, work)
            task_status.started()
            await trio.sleep_forever()

    async def _wake_on_adverts(self, peers_changed: Callable[[], Awaitable[object]]) -> None:
        """Capacity shows up in adverts (published on change): each one lets queued tasks try again."""
        while True:
            await peers_changed()
            self.queue.wake(jitter=True)

    async def _queue_terms(self, task_id: str) -> QueueTerms:
        found = await self.store.queue_terms(task_id)
        return NO_QUEUE if found is None else QueueTerms(priority=found[0], deadline=found[1])

    def queue_terms(self, timeout: float | None = None, priority: int = 0) -> QueueTerms:
        """A new task's terms: it may wait ``timeout`` seconds for room (None: the settings' default)."""
        timeout = self.settings.queue_timeout if timeout is None else timeout
        return QueueTerms(priority=priority, deadline=self.clock() + timeout if timeout > 0 else 0.0)

    # ------------------------------------------------------------ public operations
    @staticmethod
    def new_task_id() -> str:
        return "t" + secrets.token_hex(8)

    async def submit(
        self, spec: JobSpec, *, local: bool = False, task_id: str | None = None, exclude: frozenset[str] = frozenset(),
        queue: QueueTerms | None = None,
    ) -> str:
        """Record a task and start placing it. ``task_id``: one from ``new_task_id`` that job data
        was already stored under; never on a provider in ``exclude`` (replicas); ``queue``: how it
        waits for room (default: ``queue_terms()``)."""
        assert self._nursery is not None, "Requester.run() must be started first"
        task_id = task_id or self.new_task_id()
        terms = self.queue_terms() if queue is None else queue
        if spec.nodes > 1:
            return await self.gangs.submit(spec, task_id, terms)
        now = self.clock()
        record = TaskRecord(
            task_id=task_id, role=TaskRole.REQUESTER, state=TaskState.PLACING, spec=spec,
            requester=self.signer.peer_id, created_at=now, updated_at=now, local=local,
        )
        await self.store.create_task(record)
        await self.store.put_queue_terms(task_id, terms.priority, terms.deadline)
        self.tracker.open(task_id)
        self.queue.join(task_id, terms.priority)  # now, not in the task: the queue keeps submission order
        self._nursery.start_soon(self._guarded, task_id, self._place(task_id, spec, local, terms, exclude=exclude))
        return task_id

    # ------------------------------------------------------------ for peerd.jobs.gang
    def start(self, task_id: str, work: Awaitable[None]) -> None:
        """Run one task's ``work`` in the requester's nursery, guarded like any placement."""
        assert self._nursery is not None, "Requester.run() must be started first"
        self._nursery.start_soon(self._guarded, task_id, work)

    def set_canceller(self, task_id: str, stop: Callable[[str], Awaitable[None]]) -> None:
        """What ``cancel(task_id)`` calls while the task runs (dropped when it settles)."""
        self._cancel[task_id] = stop

    def channel(self, stream: ByteStream, peer_id: str) -> Channel:
        return self._channel(stream, peer_id)

    async def record_attempt(self, task_id: str, provider: str, outcome: AttemptOutcome, code: str, detail: str,
                             signed: bytes | None = None) -> None:
        await self._record_attempt(task_id, provider, outcome, code, detail, signed)

    async def settle(self, task_id: str, state: TaskState, detail: str, *, exit_code: int | None = None) -> None:
        await self._settle(task_id, state, detail, exit_code=exit_code)

    async def _guarded(self, task_id: str, work: Awaitable[None]) -> None:
        """The edge of one task's placement: a bug here ends the task, never the daemon."""
        try:
            await work
        except Exception as exc:  # per-task edge: log it and settle the task with the reason
            log.exception("task %s failed inside the requester", task_id)
            await self._settle(task_id, TaskState.LOST, f"internal error: {type(exc).__name__}: {exc}")

    async def cancel(self, task_id: str) -> bool:
        """Ask the task to stop; False if it is unknown or already final."""
        stop = self._cancel.get(task_id)
        if stop is None:
            return False
        await stop("cancelled by the user")
        return True

    # ------------------------------------------------------------ placement
    async def _place(
        self, task_id: str, spec: JobSpec, local: bool, terms: QueueTerms, exclude: frozenset[str] = frozenset()
    ) -> None:
        """Placement rounds, each in the queue's turn, until leased, refused for good, or the queue
        deadline passed. Between rounds the task is ``queued``: it holds nothing anywhere."""
        never: set[str] = set(exclude)  # providers that will not run it: refused for good (or replicas' own)
        waited = False
        now = trio.current_time()
        until = now + max(terms.deadline - self.clock(), 0.0)  # the queue deadline, on trio's clock
        first_turn = max(until, now + self.settings.placement_deadline)  # even a task that may not wait gets one
        with trio.CancelScope() as scope:
            self._cancel[task_id] = self._cancel_placing(scope)
            if not local and not self._anyone(spec):
                await self._wait_for_peers(task_id, spec, trio.current_time() + self.settings.placement_deadline)
            while True:
                if not waited and self.queue.closed:
                    await self.queued(task_id)  # others wait for room already: so does it, in its place
                with trio.move_on_at(until if waited else first_turn) as turn:
                    await self.queue.turn(task_id)
                if turn.cancelled_caught:
                    waited = True
                    break
                ending = await self._round(task_id, spec, local, never)
                if ending is Ending.FINAL:
                    return
                if trio.current_time() >= until or not self._worth_waiting(spec, local, never, ending):
                    break
                self.queue.full(task_id)
                await self.queued(task_id)
                waited = True
        if scope.cancelled_caught:
            await self._settle(task_id, TaskState.CANCELLED, "cancelled before placement")
            return
        detail = not_placed_reason(await self.store.attempts(task_id), local=local, waited=waited)
        await self._settle(task_id, TaskState.NOT_PLACED, detail)

    async def _round(self, task_id: str, spec: JobSpec, local: bool, never: set[str]) -> Ending:
        """Ask the best providers one at a time, within ``max_attempts`` and ``placement_deadline``.
        NOT_NOW if any answered "no room now"; providers that refused for good join ``never``."""
        deadline = trio.current_time() + self.settings.placement_deadline
        asked: set[str] = set(never)
        ending = Ending.NEVER
        source = self.candidates
        if self.all_providers is not None and not self.candidates(spec, self.clock(), local):
            # Nobody fits on paper: ask the providers themselves, so the answer is
            # theirs and signed (and a stale advert does not hide a willing provider).
            source = self.all_providers
        for _ in range(self.settings.max_attempts):
            ranked = [c for c in source(spec, self.clock(), local) if c.peer_id not in asked]
            if not ranked or trio.current_time() >= deadline:
                break
            hint = self.queue.hint  # where one of our tasks just freed a slot
            candidate = next((c for c in ranked if c.peer_id == hint), ranked[0])
            asked.add(candidate.peer_id)
            outcome = await self._attempt(task_id, spec, candidate, deadline)
            if outcome is Ending.FINAL:
                return outcome
            if outcome is Ending.NEVER:
                never.add(candidate.peer_id)
            else:
                ending = Ending.NOT_NOW
            if task_id in self._retry_same:
                self._retry_same.discard(task_id)
                asked.discard(candidate.peer_id)
        return ending

    def _worth_waiting(self, spec: JobSpec, local: bool, never: set[str], ending: Ending) -> bool:
        """Will room for this job appear? Yes if a provider said "not now", or one could run it once its
        jobs end (its advert's totals fit); no if every provider refused it for good."""
        if ending is Ending.NOT_NOW:
            return True
        if local or self.could_run is None:
            return False
        return any(c.peer_id not in never for c in self.could_run(spec, self.clock(), local))

    async def queued(self, task_id: str) -> None:
        """No provider has room now: the task waits (``queued``) with the latest reason."""
        attempts = await self.store.attempts(task_id)
        ahead = len(self.queue) - 1
        why = describe(attempts[-1]) if attempts else f"no provider has room now; {ahead} earlier task(s) wait"
        await self.store.mark_queued(task_id, self.clock())
        detail = f"queued: no room now ({why})"
        await self.store.update_task(task_id, now=self.clock(), state=TaskState.QUEUED, detail=detail)
        self.tracker.state(task_id, TaskState.QUEUED, detail)

    def _anyone(self, spec: JobSpec) -> bool:
        """Is there a candidate, or at least a live provider to ask?"""
        now = self.clock()
        return bool(self.candidates(spec, now, False)) or (
            self.all_providers is not None and bool(self.all_providers(spec, now, False))
        )

    async def _wait_for_peers(self, task_id: str, spec: JobSpec, deadline: float) -> None:
        """No provider known yet (a requester just started): wait, bounded, for adverts."""
        wait = min(self.settings.peer_wait, deadline - trio.current_time())
        if wait <= 0:
            return
        await self._back_to_placing(task_id, f"waiting for peers: the peer table is empty (up to {wait:g}s)")
        with trio.move_on_after(wait):
            while not self._anyone(spec):
                await (self.peers_changed or trio.sleep_forever)()

    def _cancel_placing(self, scope: trio.CancelScope) -> Callable[[str], Awaitable[None]]:
        async def stop(reason: str) -> None:
            scope.cancel()

        return stop

    async def _attempt(self, task_id: str, spec: JobSpec, candidate: Candidate, deadline: float) -> Ending:
        """One negotiation, and the run when it leads to a lease."""
        lease: Lease | None = None
        failure: Exception | None = None
        try:
            async with self.open_stream(candidate.peer_id, candidate.addrs) as stream:
                try:
                    channel = self._channel(stream, candidate.peer_id)
                    with trio.fail_at(max(deadline, trio.current_time() + 0.1)):
                        lease = await self._negotiate(channel, task_id, spec)
                    await self._record_attempt(task_id, candidate.peer_id, AttemptOutcome.ACCEPTED, "", "leased")
                    await self._collect(channel, task_id)
                    return Ending.FINAL
                except _ATTEMPT_ERRORS as exc:
                    failure = exc  # handled below, outside the stream's own nursery
        except _ATTEMPT_ERRORS as exc:
            failure = failure or exc
        except BaseExceptionGroup as group:
            failure = failure or single_error(group, _ATTEMPT_ERRORS)
        return await self._after_failure(task_id, candidate, lease, failure)

    async def _after_failure(
        self, task_id: str, candidate: Candidate, lease: Lease | None, failure: Exception | None
    ) -> Ending:
        peer = candidate.peer_id
        ending = Ending.NOT_NOW
        if isinstance(failure, AttemptFailed):
            await self._record_attempt(task_id, peer, failure.outcome, failure.code, failure.detail, failure.signed)
            if failure.code not in _NOT_NOW:
                ending = Ending.NEVER
        elif isinstance(failure, trio.TooSlowError):
            await self._record_attempt(task_id, peer, AttemptOutcome.TIMEOUT, "", "placement deadline passed")
        elif isinstance(failure, ProtocolError):
            await self._record_attempt(task_id, peer, AttemptOutcome.ERROR, "", f"{failure.code}: {failure}")
            if lease is not None:
                await self.superseded.supersede(task_id, peer, lease, "the provider broke the protocol after the lease")
                await self._back_to_placing(task_id, "the provider broke the protocol after the lease")
            return Ending.NEVER
        elif lease is None:
            outcome = AttemptOutcome.TIMEOUT if isinstance(failure, PeerTimeout) else AttemptOutcome.UNREACHABLE
            await self._record_attempt(task_id, peer, outcome, "", str(failure))
        if lease is None or isinstance(failure, trio.TooSlowError):
            return ending
        log.info("lost provider %s for %s (%s); trying to resume", peer[:16], task_id, failure)
        return Ending.FINAL if await self._resume(task_id, candidate, lease) else Ending.NOT_NOW

    def _channel(self, stream: ByteStream, peer_id: str) -> Channel:
        machine = RequesterNegotiation(self.signer, peer_id)
        return TaskChannel(stream, machine, timeout=self.settings.io_timeout)

    async def _negotiate(self, channel: Channel, task_id: str, spec: JobSpec) -> Lease:
        """Request → offer → accept → co-signed lease; AttemptFailed otherwise."""
        began = trio.current_time()
        machine = channel.machine
        await channel.send_frame(machine.send_request(task_id, spec, now=self.clock()))
        answer = await channel.receive(timeout=self.settings.provider_timeout)
        if isinstance(answer, Reject):
            raise AttemptFailed(AttemptOutcome.REJECTED, answer.code.value, answer.detail, machine.last_envelope)
        assert isinstance(answer, Offer)
        if answer.price > spec.max_price or len(answer.gpus) != spec.gpus:
            await channel.send_frame(machine.cancel("offer does not match the request"))
            raise AttemptFailed(AttemptOutcome.DECLINED, "",
                                f"offer at {answer.price:g}/h with {len(answer.gpus)} GPUs")
        await channel.send_frame(await self._accept(channel))
        proposal = await channel.receive(timeout=self.settings.provider_timeout)
        if isinstance(proposal, Reject):
            raise AttemptFailed(AttemptOutcome.REJECTED, proposal.code.value, proposal.detail, machine.last_envelope)
        assert isinstance(proposal, Lease)  # the machine checked it against the request, offer and price
        countersigned = machine.countersign_lease()
        lease, terms = machine.lease, machine.lease_terms
        assert lease is not None and terms is not None
        # Write before act: the lease is ours once recorded, then the provider learns we signed.
        await self.store.put_lease(task_id, lease, terms.expires_at, replace=True)  # a retry re-leases
        await self.store.update_task(task_id, now=self.clock(), state=TaskState.RUNNING,
                                     provider=terms.provider, price=terms.price)
        self.tracker.state(task_id, TaskState.RUNNING, f"leased on {terms.provider[:16]}…")
        self.queue.placed(task_id)
        await channel.send_frame(countersigned)
        if self.on_negotiated is not None:
            self.on_negotiated(trio.current_time() - began)
        return lease

    async def _accept(self, channel: Channel) -> bytes:
        """The Accept to send; an offer that expired (the machine's one rule) is declined instead."""
        try:
            return channel.machine.accept(now=self.clock())
        except LocalProtocolError as exc:
            if exc.code != RejectCode.OFFER_EXPIRED.value:
                raise
        await channel.send_frame(channel.machine.cancel("the offer expired before it was accepted"))
        raise AttemptFailed(AttemptOutcome.DECLINED, RejectCode.OFFER_EXPIRED.value,
                            "the offer expired before it was accepted")

    # ------------------------------------------------------------ after the lease
    async def _resume(self, task_id: str, candidate: Candidate, lease: Lease) -> bool:
        """Re-attach to a leased task on a new stream; on failure, back to placing.

        Only re-attaching is bounded (by ``provider_timeout``): once the provider
        answers the Resume, the job may run as long as its lease allows, and a
        stream that breaks again opens a fresh re-attach window.
        """
        deadline = trio.current_time() + self.settings.provider_timeout
        while trio.current_time() < deadline:
            attached = trio.Event()
            try:
                return await self._resume_once(task_id, candidate, lease, deadline, attached)
            except AttemptFailed as failed:
                # The provider answered: it does not hold this lease (e.g. our countersignature
                # never reached it). It is healthy, so it may be asked again under a new lease.
                await self._record_attempt(task_id, candidate.peer_id, AttemptOutcome.REJECTED, failed.code,
                                           f"refused to resume: {failed.detail}", failed.signed)
                if failed.code == RejectCode.UNKNOWN_TASK:
                    self._retry_same.add(task_id)
                await self._back_to_placing(task_id, f"the provider does not hold the lease ({failed.code})")
                return False
            except ProtocolError as exc:
                await self._record_attempt(task_id, candidate.peer_id, AttemptOutcome.ERROR, exc.code, str(exc))
                await self.superseded.supersede(task_id, candidate.peer_id, lease,
                                                "the provider broke the protocol while resuming")
                await self._back_to_placing(task_id, "the provider broke the protocol while resuming")
                return False
            except (TaskWireError, P2PError, OSError, trio.TooSlowError) as exc:
                log.info("resuming %s on %s failed: %s", task_id, candidate.peer_id[:16], exc)
            if attached.is_set():
                deadline = trio.current_time() + self.settings.provider_timeout
            with trio.move_on_at(deadline):
                await trio.sleep(1.0)  # back off between tries, never past the window
        # the lost attempt keeps the lease, so that it is ended on the provider once it is back
        await self.superseded.supersede(task_id, candidate.peer_id, lease,
                                        "provider_lost: the provider vanished after the lease and could not be resumed")
        await self._back_to_placing(task_id, "provider lost; placing elsewhere")
        return False

    async def _resume_once(
        self, task_id: str, candidate: Candidate, lease: Lease, deadline: float, attached: trio.Event
    ) -> bool:
        """One re-attach: the dial (bounded by the p2p connect timeout) and the first
        answer must come before ``deadline``; the collection after it is not bounded."""
        failure: Exception | None = None
        try:
            async with self.open_stream(candidate.peer_id, candidate.addrs) as stream:
                try:
                    channel = self._channel(stream, candidate.peer_id)
                    with trio.fail_at(deadline):
                        await channel.send_frame(channel.machine.resume(lease, self.tracker.next_log_seq(task_id)))
                        first = await channel.receive()
                    attached.set()
                    return await self._collect(channel, task_id, first=first)
                except _ATTEMPT_ERRORS as exc:
                    failure = exc
        except _ATTEMPT_ERRORS as exc:
            failure = failure or exc
        except BaseExceptionGroup as group:
            failure = failure or single_error(group, _ATTEMPT_ERRORS)
        assert failure is not None
        raise failure

    async def _back_to_placing(self, task_id: str, detail: str) -> None:
        await self.store.update_task(task_id, now=self.clock(), state=TaskState.PLACING, detail=detail)
        self.tracker.state(task_id, TaskState.PLACING, detail)

    async def _collect(self, channel: Channel, task_id: str, *, first: Message | None = None) -> bool:
        self._cancel[task_id] = self._cancel_running(channel, task_id)
        try:
            while True:
                msg, first = (first, None) if first is not None else (
                    await channel.receive(timeout=self.settings.provider_timeout), None)
                if isinstance(msg, LogChunk):
                    self.tracker.log(task_id, msg)
                elif isinstance(msg, Status):
                    self.tracker.state(task_id, msg.state if msg.state is TaskState.STAGING else TaskState.RUNNING,
                                       msg.detail)
                elif isinstance(msg, Result):
                    self.queue.wake(channel.machine.peer_id)  # its slot there is free: a queued task may have it
                    break
                elif isinstance(msg, Reject):
                    raise AttemptFailed(AttemptOutcome.LOST, msg.code.value, msg.detail, channel.machine.last_envelope)
            proposal = await channel.receive(timeout=self.settings.provider_timeout)
            assert isinstance(proposal, Receipt)  # the machine checked it against the lease and the result
            countersigned = countersign_receipt(channel.machine)
            receipt, terms = channel.machine.receipt, channel.machine.receipt_terms
            assert receipt is not None and terms is not None
            await self._finish(task_id, msg, receipt, terms)  # write before act
            await channel.send_frame(countersigned)
            return True
        finally:
            self._cancel.pop(task_id, None)

    def _cancel_running(self, channel: Channel, task_id: str) -> Callable[[str], Awaitable[None]]:
        async def stop(reason: str) -> None:
            await channel.send_frame(channel.machine.cancel(reason))

        return stop

    async def _finish(self, task_id: str, result: Result, receipt: Receipt, terms: ReceiptTerms) -> None:
        now = self.clock()
        await self.store.put_result(ResultRecord(result, finished_at=now))
        await self.store.put_receipt(task_id, receipt, terms.provider, terms.requester, terms.cost, terms.finished_at)
        await self._settle(task_id, result.state, result.detail, exit_code=result.exit_code)

    async def _settle(self, task_id: str, state: TaskState, detail: str, *, exit_code: int | None = None) -> None:
        with trio.CancelScope(shield=True):
            record = await self.store.update_task(task_id, now=self.clock(), state=state, detail=detail,
                                                  exit_code=exit_code)
            if self.on_settled is not None:
                await self.on_settled()  # e.g. reputation folds in what this task taught
        self._cancel.pop(task_id, None)
        self.queue.leave(task_id)
        if record.provider or record.spec.nodes > 1:
            self.queue.wake(record.provider)  # its slot there is free now: the next queued task may have it
        self.tracker.finish(task_id, state, detail)

    async def _record_attempt(self, task_id: str, provider: str, outcome: AttemptOutcome, code: str,
                              detail: str, signed: bytes | None = None) -> None:
        """Append to the task's placement log (``peerd.jobs.attemptlog``)."""
        attempt = next_attempt(await self.store.attempts(task_id), task_id, provider, outcome, code, detail, signed,
                               self.clock())
        if attempt is None:
            return
        with trio.CancelScope(shield=True):
            await self.store.add_attempt(attempt)
        self.tracker.state(task_id, TaskState.PLACING, f"{provider[:16]}…: {outcome} {code}".strip())

    # ------------------------------------------------------------ after a restart
    async def _recover(self, record: TaskRecord, terms: QueueTerms) -> None:
        """Resume a leased task; place one that was not (a queued one keeps its place and deadline)."""
        self.tracker.open(record.task_id)
        lease = await self.store.get_lease(record.task_id)
        if lease is not None and lease.requester_sig and record.provider:
            candidate = Candidate(peer_id=record.provider, addrs=[])
            if await self._resume(record.task_id, candidate, lease):
                return
        await self._place(record.task_id, record.spec, record.local, terms)

