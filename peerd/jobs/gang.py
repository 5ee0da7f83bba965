"""Gang jobs on the requester's side: one job on N distinct providers, all or none.

``GangPlacer.submit`` records the gang as ONE task (what ``peerd show``,
``logs``, ``wait`` and ``cancel`` name) and places it in rounds:

1. **Offers.** Every rank asks the best candidate not yet used by another
   rank (``request.gang``: the gang's id, size and the rank). A refusal is
   recorded on the gang task with its signed reason and the rank asks the next
   candidate; nothing is held by an offer, so this costs nobody anything.
2. **Accepts.** Once all N offered, each rank accepts with the roster (every
   rank's peer, WireGuard key and endpoint from the offers); each provider
   takes its capacity and proposes a lease that binds the gang and roster.
3. **Countersign, all or none.** Only when all N provider-signed leases are
   in are they recorded (a rank task per rank, ``gang_ranks``) and
   countersigned. If any rank refuses at accept, does not answer in time or
   its offer expired, every rank holding a proposed lease is sent ``cancel``
   (its provider releases what it held) and a new round starts without the
   refusing provider; after ``max_attempts`` rounds or the placement deadline
   the gang ends ``not_placed`` with every provider's reason.

While it runs, each rank's log lines reach the gang task prefixed
``[rank r] ``. A rank that ends in anything but ``succeeded``, or whose
provider is lost (no resume: the other ranks cannot go on without it), stops
the whole gang: the other ranks are cancelled and the gang ends ``failed``
naming that rank and its provider. A lost rank's lease is handed to the
requester's ``LeaseEnder``, so its provider stops the container when it is
back. Every rank's receipt is its own (it covers the time that provider
served). A gang does not survive a restart of the requester: it is ended
``lost`` and its leases are ended on their providers (``recover``).
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from peerd.jobs.leasedjob import countersign_receipt
from peerd.jobs.queue import QueueTerms
from peerd.jobs.taskwire import TaskWireError, single_error
from peerd.p2p.errors import P2PError
from peerd.state.store import AttemptOutcome, ResultRecord, TaskRecord, TaskRole
from protocol import LocalProtocolError, ProtocolError
from protocol.messages import (
    FINAL_STATES,
    TRANSIENT_REJECTS,
    GangRef,
    JobSpec,
    Lease,
    LogChunk,
    Offer,
    Receipt,
    Reject,
    RejectCode,
    Result,
    RosterMember,
    Status,
    TaskState,
)

if TYPE_CHECKING:  # the requester builds its GangPlacer: no import cycle at run time
    from peerd.jobs.requester import Candidate, Channel, Requester

log = logging.getLogger(__name__)

_STREAM_ERRORS = (ProtocolError, TaskWireError, P2PError, OSError, trio.TooSlowError)


class Stage(enum.Enum):
    ASKING = "asking"
    OFFERED = "offered"
    PROPOSED = "proposed"
    SIGNED = "signed"
    RUNNING = "running"
    ENDED = "ended"
    FAILED = "failed"  # refused or broke before the lease: the round cannot go on


class LinePrefixer:
    """Prefixes every line of one rank's stream with ``[rank r] ``, across chunk boundaries."""

    def __init__(self, rank: int) -> None:
        self.prefix = f"[rank {rank}] ".encode()
        self.at_line_start = True

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        lines = data.split(b"\n")
        out = [(self.prefix if self.at_line_start else b"") + lines[0]]
        out += [self.prefix + line if line else line for line in lines[1:-1]]
        if len(lines) > 1:
            out.append(self.prefix + lines[-1] if lines[-1] else b"")
        self.at_line_start = data.endswith(b"\n")
        return b"\n".join(out)


@dataclass
class _Rank:
    rank: int
    task_id: str
    stage: Stage = Stage.ASKING
    candidate: Candidate | None = None
    channel: Channel | None = None
    offer: Offer | None = None
    lease: Lease | None = None
    countersigned: bytes = b""
    cancel_sent: bool = False
    state: TaskState = TaskState.PLACING
    exit_code: int | None = None
    detail: str = ""


@dataclass
class _Round:
    """One placement round of a gang: its ranks, and the gates the coordinator opens."""

    gang_id: str
    spec: JobSpec
    ranks: list[_Rank]
    used: set[str]  # providers this round asked, or that refused this gang
    refused: set[str]  # providers to leave out of the next round
    busy: set[str] = field(default_factory=set)  # providers with no room now: left out until the next turn
    changed: trio.Event = field(default_factory=trio.Event)
    go_accept: trio.Event = field(default_factory=trio.Event)
    go_sign: trio.Event = field(default_factory=trio.Event)
    go_send: trio.Event = field(default_factory=trio.Event)
    abort: str = ""  # set with the gates: cancel instead of going on
    no_candidate: bool = False
    not_now: bool = False  # a provider had no room now (busy, no capacity, draining): worth queueing for
    roster: tuple[RosterMember, ...] = ()
    leased: bool = False
    stopping: str = ""  # while running: why the gang is being stopped (the first bad rank's story)
    failure: _Rank | None = None
    cancelled_by_user: bool = False

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def all_at(self, stage: Stage) -> bool:
        return all(r.stage is stage for r in self.ranks)

    def failed(self) -> bool:
        return self.no_candidate or any(r.stage is Stage.FAILED for r in self.ranks)

    def stop(self, reason: str) -> None:
        self.abort = reason
        for gate in (self.go_accept, self.go_sign, self.go_send):
            gate.set()


class GangPlacer:
    """Places and runs the gang jobs of one ``Requester`` (which owns the nursery and the store)."""

    def __init__(self, requester: Requester) -> None:
        self.r = requester
        self._log_seq: dict[str, int] = {}
        self._attempts = trio.Lock()  # ranks record at once; the placement log numbers itself

    async def _attempt(self, gang_id: str, provider: str, outcome: AttemptOutcome, code: str, detail: str,
                       signed: bytes | None = None) -> None:
        async with self._attempts:
            await self.r.record_attempt(gang_id, provider, outcome, code, detail, signed)

    # ------------------------------------------------------------ entry points
    async def submit(self, spec: JobSpec, task_id: str, terms: QueueTerms) -> str:
        now = self.r.clock()
        record = TaskRecord(
            task_id=task_id, role=TaskRole.REQUESTER, state=TaskState.PLACING, spec=spec,
            requester=self.r.signer.peer_id, created_at=now, updated_at=now,
        )
        await self.r.store.create_task(record)
        await self.r.store.put_queue_terms(task_id, terms.priority, terms.deadline)
        self.r.tracker.open(task_id)
        self.r.queue.join(task_id, terms.priority)
        self.r.start(task_id, self._run(task_id, spec, terms))
        return task_id

    async def recover(self, record: TaskRecord) -> None:
        """After a restart: a gang cannot be re-joined; end it and every lease it holds."""
        store = self.r.store
        for rank, rank_task in await store.gang_ranks(record.task_id):
            lease, rank_record = await store.get_lease(rank_task), await store.get_task(rank_task)
            if lease is None or rank_record is None or not rank_record.provider:
                continue
            if rank_record.state not in FINAL_STATES:
                await self.r.superseded.supersede(rank_task, rank_record.provider, lease,
                                                  "the requester restarted during the gang")
                await store.update_task(rank_task, now=self.r.clock(), state=TaskState.LOST,
                                        detail=f"rank {rank}: the requester restarted")
        self.r.tracker.open(record.task_id)
        await self.r.settle(record.task_id, TaskState.LOST, "the requester restarted; a gang does not survive that")

    # ------------------------------------------------------------ placement rounds
    async def _run(self, gang_id: str, spec: JobSpec, terms: QueueTerms) -> None:
        """Turns in the requester's queue, each of up to ``max_attempts`` rounds; between turns the gang
        is ``queued`` and holds nothing (no offer, no lease) until all its members may fit together."""
        settings = self.r.settings
        refused: set[str] = set()  # providers that refused this gang for good
        current: list[_Round] = []
        rounds = itertools.count()
        waited = False
        now = trio.current_time()
        until = now + max(terms.deadline - self.r.clock(), 0.0)
        first_turn = max(until, now + settings.placement_deadline)
        with trio.CancelScope() as scope:
            self.r.set_canceller(gang_id, self._canceller(scope, current))
            while True:
                if not waited and self.r.queue.closed:
                    await self.r.queued(gang_id)  # others wait for room already: so does it, in its place
                with trio.move_on_at(until if waited else first_turn) as turn:
                    await self.r.queue.turn(gang_id)
                if turn.cancelled_caught:
                    break
                leased, not_now = await self._turn(gang_id, spec, refused, current, rounds)
                if leased:
                    return
                if trio.current_time() >= until or not (not_now or self._could_fit(spec, refused)):
                    break
                self.r.queue.full(gang_id)
                await self.r.queued(gang_id)
                waited = True
        if scope.cancelled_caught:
            await self.r.settle(gang_id, TaskState.CANCELLED, "cancelled before placement")
            return
        reasons = [
            " ".join(filter(None, (f"{a.provider[:16]}…:", a.outcome.value, a.reason_code or "", a.detail)))
            for a in await self.r.store.attempts(gang_id)
        ]
        why = "; ".join(reasons) or "no provider in the peer table joins gangs and fits this job"
        await self.r.settle(gang_id, TaskState.NOT_PLACED, f"gang of {spec.nodes} not placed: {why}")

    async def _turn(self, gang_id: str, spec: JobSpec, refused: set[str], current: list[_Round],
                    rounds: Iterator[int]) -> tuple[bool, bool]:
        """Up to ``max_attempts`` rounds within the placement deadline: (leased, a provider had no room now)."""
        settings = self.r.settings
        deadline = trio.current_time() + settings.placement_deadline
        not_now = False
        busy: set[str] = set()
        for _ in range(settings.max_attempts):
            if trio.current_time() >= deadline:
                break
            n = next(rounds)
            ranks = [_Rank(r, _rank_task_id(gang_id, r, n)) for r in range(spec.nodes)]
            rnd = _Round(gang_id, spec, ranks, used=refused | busy, refused=refused, busy=busy)
            current[:] = [rnd]
            await self._round(rnd, deadline)
            not_now = not_now or rnd.not_now
            if rnd.leased:
                await self._settle(rnd)
                return True, not_now
            if rnd.no_candidate:
                break
        return False, not_now

    def _could_fit(self, spec: JobSpec, refused: set[str]) -> bool:
        """Do enough providers that could run a member once they have room (and did not refuse) exist?"""
        could_run = self.r.could_run
        if could_run is None:
            return False
        return len([c for c in could_run(spec, self.r.clock(), False) if c.peer_id not in refused]) >= spec.nodes

    def _canceller(self, scope: trio.CancelScope, current: list[_Round]) -> Callable[[str], Awaitable[None]]:
        async def stop(reason: str) -> None:
            rnd = current[0] if current else None
            if rnd is None or not rnd.leased:
                scope.cancel()  # before the leases: every open stream is closed, nothing was countersigned
                return
            rnd.cancelled_by_user = True
            await self._stop_all(rnd, reason)

        return stop

    async def _round(self, rnd: _Round, deadline: float) -> None:
        """One round: offers, accepts, leases; then (leased) the run, until every rank ended."""
        async with trio.open_nursery() as nursery:
            for rank in rnd.ranks:
                nursery.start_soon(self._member, rnd, rank, deadline)
            with trio.move_on_at(deadline) as timer:
                ok = await self._gate(rnd, Stage.OFFERED)
                if ok:
                    rnd.roster = _roster(rnd.ranks)
                    rnd.go_accept.set()
                    ok = await self._gate(rnd, Stage.PROPOSED)
                if ok:
                    rnd.go_sign.set()
                    ok = await self._gate(rnd, Stage.SIGNED)
            if timer.cancelled_caught:
                ok = False
                await self._attempt(rnd.gang_id, "", AttemptOutcome.TIMEOUT, "", "placement deadline passed")
            if not ok:
                rnd.stop("another rank of the gang could not be placed")
                return
            await self._record_leases(rnd)
            rnd.leased = True
            self.r.queue.placed(rnd.gang_id)
            rnd.go_send.set()

    async def _gate(self, rnd: _Round, stage: Stage) -> bool:
        """Wait until every rank reached ``stage``; False as soon as the round cannot."""
        while not rnd.all_at(stage):
            if rnd.failed():
                return False
            await rnd.changed.wait()
        return True

    def _pick(self, rnd: _Round) -> Candidate | None:
        ranked = [c for c in self.r.candidates(rnd.spec, self.r.clock(), False) if c.peer_id not in rnd.used]
        if not ranked:
            return None
        rnd.used.add(ranked[0].peer_id)
        return ranked[0]

    async def _member(self, rnd: _Round, rank: _Rank, deadline: float) -> None:
        """One rank: find a provider that offers, then follow the gates; after the lease, run."""
        while rank.stage is Stage.ASKING and not rnd.abort:
            candidate = self._pick(rnd)
            if candidate is None:
                if not rnd.no_candidate and not rnd.abort:
                    await self._attempt(rnd.gang_id, "", AttemptOutcome.DECLINED, "",
                                                f"rank {rank.rank}: no other provider joins gangs and fits this job "
                                                f"({rnd.spec.nodes} distinct providers needed)")
                rnd.no_candidate = True
                rnd.wake()
                return
            rank.candidate = candidate
            try:
                async with self.r.open_stream(candidate.peer_id, candidate.addrs) as stream:
                    rank.channel = self.r.channel(stream, candidate.peer_id)
                    await self._negotiate(rnd, rank)
                    if rank.stage is Stage.SIGNED and not rnd.abort:
                        await rnd.go_send.wait()
                    if rnd.leased:
                        await self._run_rank(rnd, rank)
            except BaseExceptionGroup as group:
                await self._member_broke(rnd, rank, single_error(group, _STREAM_ERRORS))
            except _STREAM_ERRORS as exc:
                await self._member_broke(rnd, rank, exc)
            finally:
                rnd.wake()

    async def _negotiate(self, rnd: _Round, rank: _Rank) -> None:
        channel = rank.channel
        assert channel is not None and rank.candidate is not None
        machine, peer, timeout = channel.machine, rank.candidate.peer_id, self.r.settings.provider_timeout
        gang = GangRef(gang_id=rnd.gang_id, size=rnd.spec.nodes, rank=rank.rank)
        await channel.send_frame(machine.send_request(rank.task_id, rnd.spec, now=self.r.clock(), gang=gang))
        answer = await channel.receive(timeout=timeout)
        if isinstance(answer, Reject):
            self._refused(rnd, peer, answer.code)
            await self._record(rnd, rank, AttemptOutcome.REJECTED, answer.code.value, answer.detail,
                               machine.last_envelope)
            return  # still ASKING: the next candidate
        assert isinstance(answer, Offer)
        rank.offer, rank.stage = answer, Stage.OFFERED
        rnd.wake()
        await rnd.go_accept.wait()
        if rnd.abort:
            await channel.send_frame(machine.cancel(f"gang: {rnd.abort}"))
            await self._record(rnd, rank, AttemptOutcome.DECLINED, "", f"offer cancelled: {rnd.abort}")
            return
        try:
            accept = machine.accept(now=self.r.clock(), roster=rnd.roster)
        except LocalProtocolError as exc:
            if exc.code != RejectCode.OFFER_EXPIRED.value:
                raise
            await channel.send_frame(machine.cancel("the offer expired before the whole gang had offered"))
            rank.stage = Stage.FAILED
            await self._record(rnd, rank, AttemptOutcome.DECLINED, "", "the offer expired before the gang was complete")
            return
        await channel.send_frame(accept)
        proposal = await channel.receive(timeout=timeout)
        if isinstance(proposal, Reject):
            rank.stage = Stage.FAILED
            self._refused(rnd, peer, proposal.code)
            await self._record(rnd, rank, AttemptOutcome.REJECTED, proposal.code.value, proposal.detail,
                               machine.last_envelope)
            return
        assert isinstance(proposal, Lease)  # the machine checked it: this gang, this roster
        rank.stage = Stage.PROPOSED
        rnd.wake()
        await rnd.go_sign.wait()
        if rnd.abort:
            await channel.send_frame(machine.cancel(f"gang: {rnd.abort}"))
            await self._record(rnd, rank, AttemptOutcome.DECLINED, "", f"proposed lease cancelled: {rnd.abort}")
            return
        rank.countersigned = machine.countersign_lease()
        rank.lease = machine.lease
        rank.stage = Stage.SIGNED
        rnd.wake()

    @staticmethod
    def _refused(rnd: _Round, peer: str, code: RejectCode) -> None:
        """"No room now" leaves the provider in later rounds (the gang may queue for it); any other refusal not."""
        if code in TRANSIENT_REJECTS:
            rnd.not_now = True
            rnd.busy.add(peer)
        else:
            rnd.refused.add(peer)

    async def _member_broke(self, rnd: _Round, rank: _Rank, exc: BaseException) -> None:
        """A stream or protocol failure: before the lease it fails the round; after it, the gang."""
        peer = rank.candidate.peer_id if rank.candidate else "?"
        if rnd.leased:
            await self._rank_lost(rnd, rank, f"{type(exc).__name__}: {exc}")
            return
        if rank.stage in (Stage.ASKING, Stage.OFFERED):
            rnd.refused.add(peer)
        if rank.stage is not Stage.ASKING or rnd.abort:
            rank.stage = Stage.FAILED
        outcome = AttemptOutcome.ERROR if isinstance(exc, ProtocolError) else AttemptOutcome.UNREACHABLE
        await self._record(rnd, rank, outcome, "", f"{type(exc).__name__}: {exc}")

    async def _record(self, rnd: _Round, rank: _Rank, outcome: AttemptOutcome, code: str, detail: str,
                      signed: bytes | None = None) -> None:
        peer = rank.candidate.peer_id if rank.candidate else ""
        await self._attempt(rnd.gang_id, peer, outcome, code, f"rank {rank.rank}: {detail}", signed)

    async def _record_leases(self, rnd: _Round) -> None:
        """Write before act: every rank's task and lease, then the gang running; then the countersignatures go."""
        store, now = self.r.store, self.r.clock()
        for rank in rnd.ranks:
            assert rank.lease is not None and rank.channel is not None and rank.candidate is not None
            terms = rank.channel.machine.lease_terms
            assert terms is not None
            await store.create_task(TaskRecord(
                task_id=rank.task_id, role=TaskRole.REQUESTER, state=TaskState.RUNNING, spec=rnd.spec,
                requester=self.r.signer.peer_id, created_at=now, updated_at=now, provider=terms.provider,
                price=terms.price,
            ))
            await store.add_gang_rank(rank.task_id, rnd.gang_id, rank.rank)
            await store.put_lease(rank.task_id, rank.lease, terms.expires_at)
            if rnd.spec.inputs and self.r.inputs is not None:  # before the countersign: the provider fetches next
                await self.r.inputs.share_inputs(rnd.gang_id, rank.task_id)
            await self._attempt(rnd.gang_id, terms.provider, AttemptOutcome.ACCEPTED, "",
                                        f"rank {rank.rank}: leased")
            rank.stage, rank.state = Stage.RUNNING, TaskState.RUNNING
        price = sum(r.offer.price for r in rnd.ranks if r.offer is not None)
        providers = ",".join(r.candidate.peer_id for r in rnd.ranks if r.candidate is not None)
        await store.update_task(rnd.gang_id, now=now, state=TaskState.RUNNING, provider=providers, price=price)
        self.r.tracker.state(rnd.gang_id, TaskState.RUNNING, f"leased on {len(rnd.ranks)} providers")

    # ------------------------------------------------------------ running
    async def _run_rank(self, rnd: _Round, rank: _Rank) -> None:
        channel = rank.channel
        assert channel is not None
        await channel.send_frame(rank.countersigned)
        prefix = {stream: LinePrefixer(rank.rank) for stream in ("stdout", "stderr")}
        while True:
            msg = await channel.receive(timeout=self.r.settings.provider_timeout)
            if isinstance(msg, LogChunk):
                self._log(rnd.gang_id, msg, prefix[msg.stream.value](msg.data))
            elif isinstance(msg, Result):
                break
            elif isinstance(msg, Status):
                continue
        proposal = await channel.receive(timeout=self.r.settings.provider_timeout)
        assert isinstance(proposal, Receipt)
        countersigned = countersign_receipt(channel.machine)
        receipt, terms = channel.machine.receipt, channel.machine.receipt_terms
        assert receipt is not None and terms is not None
        store = self.r.store
        await store.put_result(ResultRecord(msg, finished_at=self.r.clock()))
        await store.put_receipt(rank.task_id, receipt, terms.provider, terms.requester, terms.cost, terms.finished_at)
        await store.update_task(rank.task_id, now=self.r.clock(), state=msg.state, detail=msg.detail,
                                exit_code=msg.exit_code)
        rank.stage, rank.state, rank.exit_code, rank.detail = Stage.ENDED, msg.state, msg.exit_code, msg.detail
        await channel.send_frame(countersigned)
        if msg.state is not TaskState.SUCCEEDED:
            await self._first_failure(rnd, rank, f"{msg.state.value}" + (f": {msg.detail}" if msg.detail else ""))

    def _log(self, gang_id: str, chunk: LogChunk, data: bytes) -> None:
        seq = self._log_seq.get(gang_id, 0)
        self._log_seq[gang_id] = seq + 1
        self.r.tracker.log(gang_id, LogChunk(task_id=gang_id, stream=chunk.stream, seq=seq, data=data))

    async def _rank_lost(self, rnd: _Round, rank: _Rank, why: str) -> None:
        """The provider of a running rank is gone: the rank is lost, its lease ended when it is back."""
        if rank.stage is Stage.ENDED:
            return
        rank.stage, rank.state, rank.detail = Stage.ENDED, TaskState.LOST, f"provider lost: {why}"
        assert rank.candidate is not None and rank.lease is not None
        await self.r.store.update_task(rank.task_id, now=self.r.clock(), state=TaskState.LOST, detail=rank.detail)
        await self.r.superseded.supersede(rank.task_id, rank.candidate.peer_id, rank.lease,
                                          f"provider_lost: gang rank {rank.rank}")
        await self._first_failure(rnd, rank, "lost: its provider could not be reached")

    async def _first_failure(self, rnd: _Round, rank: _Rank, what: str) -> None:
        if rnd.failure is not None or rnd.cancelled_by_user:
            return
        rnd.failure = rank
        provider = rank.candidate.peer_id if rank.candidate else "?"
        rnd.stopping = f"rank {rank.rank} on {provider} {what}"
        await self._stop_all(rnd, f"gang stopped: {rnd.stopping}")

    async def _stop_all(self, rnd: _Round, reason: str) -> None:
        """Cancel every rank still running (each sends its result and receipt as usual)."""
        for other in rnd.ranks:
            if other.stage is not Stage.RUNNING or other.cancel_sent or other.channel is None:
                continue
            other.cancel_sent = True
            try:
                await other.channel.send_frame(other.channel.machine.cancel(reason))
            except _STREAM_ERRORS as exc:
                log.info("could not cancel rank %d of %s: %s", other.rank, rnd.gang_id, exc)

    async def _settle(self, rnd: _Round) -> None:
        failed = rnd.failure
        if rnd.cancelled_by_user:
            state, detail = TaskState.CANCELLED, "cancelled by the user"
        elif failed is not None:
            state, detail = TaskState.FAILED, rnd.stopping
        else:
            state, detail = TaskState.SUCCEEDED, ""
        exit_code = failed.exit_code if failed is not None else next(
            (r.exit_code for r in rnd.ranks if r.exit_code), rnd.ranks[0].exit_code)
        self._log_seq.pop(rnd.gang_id, None)
        if rnd.spec.inputs and self.r.inputs is not None:
            for rank in rnd.ranks:
                await self.r.inputs.unshare_inputs(rank.task_id)
        await self.r.settle(rnd.gang_id, state, detail, exit_code=exit_code)


def _rank_task_id(gang_id: str, rank: int, round_no: int) -> str:
    """The task id rank ``rank`` has on the wire (and in the store): fresh per round."""
    return f"{gang_id}-r{rank}" if round_no == 0 else f"{gang_id}-r{rank}-{round_no}"


def _roster(ranks: list[_Rank]) -> tuple[RosterMember, ...]:
    members = []
    for rank in ranks:
        assert rank.offer is not None and rank.offer.overlay is not None and rank.candidate is not None
        overlay = rank.offer.overlay
        members.append(RosterMember(rank=rank.rank, peer=rank.candidate.peer_id, public_key=overlay.public_key,
                                    endpoint=overlay.endpoint))
    return tuple(members)
