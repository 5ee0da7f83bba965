"""Redundant execution: run a job on K distinct providers and compare what they returned.

``peerd submit --replicas K`` places K copies of one spec through the
requester's ordinary placement, each a task of its own (its own lease, result
and co-signed receipt), linked as a replica group in the state database
(``replicas`` table; the group's id is its first replica's task id, which is
what ``submit`` returns). Replica *i + 1* is submitted once replica *i* is
leased (or ended), excluding every provider chosen so far, so the K copies
run on K distinct providers (fewer if fewer fit: those replicas end
``not_placed`` and do not vote).

``compare`` is the rule, pure. A replica that came back with an exit code
(``succeeded`` or ``failed``) votes for (output manifest id, exit code):

- all votes equal, at least two, and a strict majority of K: ``verified``;
- a strict majority of K agrees, others differ: ``majority``: the majority's
  result is returned, each dissenter is recorded ``disputed``;
- otherwise, with two or more votes: ``disputed``: no result wins, every
  voter is recorded ``inconclusive`` and every result is kept;
- fewer than two votes: ``unverified`` (nothing to compare).

The verdicts go to the ``verdicts`` table (write-once), from which reputation
reads them (``peerd.state.store_reputation``). Every replica's result and co-signed
receipt stay in the store as they were recorded: a disputed group keeps the
evidence of what each provider signed (``peerd receipts --json`` exports them).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from peerd.control.ops import ReplicaView, VerificationView
from peerd.daemon.views import receipt_view
from peerd.jobs.requester import Requester
from peerd.jobs.tracking import TaskTracker
from peerd.market.reputation import Event
from peerd.market.reputation_book import ReputationBook
from peerd.state.store import Store
from protocol.messages import FINAL_STATES, JobSpec, TaskState

log = logging.getLogger(__name__)

MAX_REPLICAS = 9


class Mode(enum.StrEnum):
    REPLICAS = "replicas"
    SPOT_CHECK = "spot-check"


def spot_check_size(probability: float, draw: Callable[[], float]) -> int:
    """How many providers a spot-checked job runs on: 2 with ``probability``, else 1.

    ``draw`` returns a uniform number in [0, 1) (``random.random``): the expected
    extra cost of ``--spot-check P`` is P jobs' worth. Only for deterministic
    jobs: two honest runs must produce the same output manifest.
    """
    return 2 if draw() < probability else 1


class VerificationState(enum.StrEnum):
    PENDING = "pending"  # replicas still running
    VERIFIED = "verified"
    MAJORITY = "majority"
    DISPUTED = "disputed"
    UNVERIFIED = "unverified"


VOTING_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED})


@dataclass(frozen=True, slots=True)
class Vote:
    task_id: str
    output_id: str
    exit_code: int | None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.output_id, self.exit_code


@dataclass(frozen=True, slots=True)
class Comparison:
    state: VerificationState
    winner: tuple[str, int | None] | None  # the (output id, exit code) returned, if any
    verdicts: dict[str, Event]  # task id -> verdict about its provider


def compare(votes: Sequence[Vote], size: int) -> Comparison:
    """The rule above: ``votes`` from the replicas that came back, ``size`` = K."""
    if len(votes) < 2:
        return Comparison(VerificationState.UNVERIFIED, votes[0].key if votes else None, {})
    (top, count), = Counter(v.key for v in votes).most_common(1)
    if 2 * count > size:
        state = VerificationState.VERIFIED if count == len(votes) else VerificationState.MAJORITY
        verdicts = {v.task_id: Event.VERIFIED if v.key == top else Event.DISPUTED for v in votes}
        return Comparison(state, top, verdicts)
    return Comparison(VerificationState.DISPUTED, None, {v.task_id: Event.INCONCLUSIVE for v in votes})


class Verifier:
    """Places replica groups and decides them; ``nursery`` holds each group's placement."""

    def __init__(
        self, requester: Requester, store: Store, tracker: TaskTracker, reputation: ReputationBook | None,
        nursery: trio.Nursery, clock: Callable[[], float], draw: Callable[[], float] = random.random,
    ) -> None:
        self.requester, self.store, self.tracker = requester, store, tracker
        self.reputation, self._nursery, self.clock, self.draw = reputation, nursery, clock, draw
        self._placed: dict[str, trio.Event] = {}  # group id -> every replica submitted

    async def submit(self, spec: JobSpec, *, replicas: int, mode: Mode = Mode.REPLICAS) -> str:
        """Submit the first replica and return its id (the group's); the others follow."""
        group = await self.requester.submit(spec)
        await self.store.add_replica(group, group, mode.value, replicas, 0)
        self._placed[group] = trio.Event()
        self._nursery.start_soon(self._place_rest, group, spec, replicas, mode)
        return group

    async def spot_check(self, spec: JobSpec, *, probability: float) -> str:
        """A group of one, or (with ``probability``) of two compared replicas: ``spot_check_size``."""
        return await self.submit(spec, replicas=spot_check_size(probability, self.draw), mode=Mode.SPOT_CHECK)

    async def _place_rest(self, group: str, spec: JobSpec, size: int, mode: Mode) -> None:
        """The per-group edge: a failure ends this group's placement (logged), never the node."""
        try:
            chosen: set[str] = set()
            task_id = group
            for idx in range(1, size):
                provider = await self._leased_on(task_id)
                if provider is not None:
                    chosen.add(provider)
                task_id = await self.requester.submit(spec, exclude=frozenset(chosen))
                await self.store.add_replica(task_id, group, mode.value, size, idx)
        except Exception:  # per-group edge: the replicas placed so far are decided as they are
            log.exception("placing the replicas of %s failed", group)
        finally:
            self._placed.pop(group).set()

    async def _leased_on(self, task_id: str) -> str | None:
        """Wait until the task is leased (or over); the provider it is on, if any."""
        async for event in self.tracker.follow_events(task_id):
            if event.state == TaskState.RUNNING or event.state in FINAL_STATES:
                break
        record = await self.store.get_task(task_id)
        return record.provider if record is not None else None

    async def is_group(self, task_id: str) -> bool:
        return await self.store.replica_group(task_id) is not None

    async def wait(self, task_id: str) -> tuple[str, VerificationView] | None:
        """For a task in a replica group: wait for every replica, decide, and return the task
        whose result stands for the group, with the verification; None if not in a group."""
        found = await self.store.replica_group(task_id)
        if found is None:
            return None
        group = found[0]
        placed = self._placed.get(group)
        if placed is not None:
            await placed.wait()
        _, _, _, members = await self.store.replica_group(group) or found
        for member in members:
            await self.tracker.wait_final(member)
        return await self.decide(group)

    async def decide(self, group: str) -> tuple[str, VerificationView]:
        """Compare the group's results, record the verdicts (once), and describe it."""
        found = await self.store.replica_group(group)
        assert found is not None
        _, mode, size, members = found
        rows: list[ReplicaView] = []
        votes: list[Vote] = []
        for member in members:
            record, result, receipt = (await self.store.get_task(member), await self.store.get_result(member),
                                       await self.store.get_receipt(member))
            state = record.state if record is not None else TaskState.LOST
            if result is not None and result.result.state in VOTING_STATES:
                votes.append(Vote(member, result.result.output_digest, result.result.exit_code))
            rows.append(ReplicaView(
                task_id=member, provider=record.provider if record else None, state=state.value,
                output_id=result.result.output_digest if result else None,
                exit_code=result.result.exit_code if result else None,
                verdict=None, receipt=receipt_view(receipt) if receipt else None,
            ))
        final = all(TaskState(r["state"]) in FINAL_STATES for r in rows) and len(members) == size
        comparison = compare(votes, size)
        if final:
            await self._record(rows, comparison)
        recorded = await self.store.verdicts(members)
        for row in rows:
            verdict = recorded.get(row["task_id"])
            row["verdict"] = verdict.value if verdict else None
        overall = comparison.state if final else VerificationState.PENDING
        stands = next((v.task_id for v in votes if v.key == comparison.winner), members[0])
        return stands, VerificationView(mode=mode, state=overall.value, group_id=group, size=size, replicas=rows)

    async def _record(self, rows: list[ReplicaView], comparison: Comparison) -> None:
        done = await self.store.verdicts(list(comparison.verdicts))
        fresh = False
        for row in rows:
            verdict, provider = comparison.verdicts.get(row["task_id"]), row["provider"]
            if verdict is None or provider is None or row["task_id"] in done:
                continue
            await self.store.put_verdict(row["task_id"], provider, verdict, self.clock())
            fresh = True
        if fresh and self.reputation is not None:
            await self.reputation.refresh()
