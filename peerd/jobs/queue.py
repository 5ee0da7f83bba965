"""The requester's queue: which task tries to place next, and when it is worth trying again.

Every placement round of a task takes a turn here first. Turns go in order —
higher ``priority`` first, then submission order — with at most ``at_once``
tasks negotiating at a time. A task leaves its turn when it is leased
(``placed``), when it ends (``leave``), or when its round found no provider
with room (``full``): it then waits again at its old place, and the queue
closes: from then on each sign that capacity may have freed lets ONE task —
the head — try (a probe); when a probe is leased the queue opens again. So a
freed slot goes to the task that has waited longest, and a closed queue costs
the providers one request per sign, not one per queued task. The signs:

- ``wake(provider)``: one of our own tasks ended on ``provider`` (a slot there
  is free now): at once, and that provider is tried first (``hint``);
- ``wake(jitter=True)``: the peer table took an advert (published on change):
  after a random delay of up to ``JITTER`` seconds, so requesters that saw the
  same advert do not all ask the same provider at the same instant;
- the backoff timer, in case no event comes (doubling from ``backoff`` to
  ``backoff_max``, with jitter), reset by every task that is placed.

The queue holds no capacity anywhere: a queued task has no offer and no lease.
It lives in memory; what must survive a restart (the order, priority and queue
deadline) is in the store, and the requester re-joins its tasks in that order.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import trio

JITTER = 0.25  # seconds: the most an advert-triggered retry waits, so requesters spread out


@dataclass(frozen=True, slots=True)
class QueueTerms:
    """How a task waits for capacity: its ``priority`` (higher first) and, on the wall clock,
    ``deadline``: after it a task still without room ends ``not_placed`` (0: it never waits)."""

    priority: int = 0
    deadline: float = 0.0


NO_QUEUE = QueueTerms()


class PlacementQueue:
    def __init__(self, *, at_once: int = 8, backoff: float = 1.0, backoff_max: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.at_once = at_once
        self.backoff, self.backoff_max = backoff, backoff_max
        self.hint: str | None = None  # the provider where a slot freed last
        self._rng = rng or random.Random()
        self._seq = itertools.count()
        self._keys: dict[str, tuple[int, int]] = {}  # every task in the queue: (-priority, submission order)
        self._waiting: set[str] = set()
        self._turns: dict[str, trio.Event] = {}
        self._placing: set[str] = set()
        self._open = True
        self._probes = 0  # while closed: how many tasks may try (one per sign of room)
        self._failures = 0  # rounds in a row that found no room
        self._retry_at = float("inf")  # trio time at which a closed queue reopens by itself
        self._kick = trio.Event()

    # ------------------------------------------------------------ a task's side
    def join(self, task_id: str, priority: int = 0) -> None:
        """Enter the queue (in submission order: call in the order tasks were submitted)."""
        if task_id not in self._keys:
            self._keys[task_id] = (-priority, next(self._seq))
            self._waiting.add(task_id)
            self._pump()

    async def turn(self, task_id: str) -> None:
        """Wait until it is this task's turn to negotiate."""
        if task_id in self._placing:
            return
        if task_id not in self._keys:
            self.join(task_id)
        self._waiting.add(task_id)
        event = self._turns.setdefault(task_id, trio.Event())
        self._pump()
        await event.wait()

    def placed(self, task_id: str) -> None:
        """Leased: its turn ends; room was found, so the queue opens and the backoff starts over."""
        self._failures = 0
        self._open = True
        self._end_turn(task_id)
        self._pump()

    def full(self, task_id: str) -> None:
        """Its round found no room: back to its place, and the queue waits for capacity to free."""
        self._end_turn(task_id)
        if task_id in self._keys:
            self._waiting.add(task_id)
        self._open = False
        self._probes = 0
        delay = min(self.backoff * 2 ** self._failures, self.backoff_max)
        self._failures += 1
        self._retry_at = min(self._retry_at, trio.current_time() + delay * self._rng.uniform(0.5, 1.0))
        self._kick_loop()

    def leave(self, task_id: str) -> None:
        """Settled or cancelled: out of the queue for good."""
        self._keys.pop(task_id, None)
        self._waiting.discard(task_id)
        self._end_turn(task_id)

    # ------------------------------------------------------------ what reopens it
    def wake(self, provider: str | None = None, *, jitter: bool = False) -> None:
        if not self._waiting:
            return
        if jitter:
            self._retry_at = min(self._retry_at, trio.current_time() + self._rng.uniform(0.0, JITTER))
            self._kick_loop()
            return
        if provider is not None:
            self.hint = provider
        self._probe()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reopen a closed queue at its retry time (a jittered advert, or the backoff)."""
        task_status.started()
        while True:
            with trio.move_on_at(self._retry_at if self._waiting and not self._open else float("inf")):
                await self._kick.wait()
            self._kick = trio.Event()
            if trio.current_time() >= self._retry_at:
                self._probe()

    # ------------------------------------------------------------ views
    def position(self, task_id: str) -> int | None:
        """1-based place among the waiting tasks, or None if it is not waiting."""
        if task_id not in self._waiting:
            return None
        key = self._keys[task_id]
        return 1 + sum(1 for other in self._waiting if self._keys[other] < key)

    @property
    def closed(self) -> bool:
        """The last round found no room: a new task waits behind the queued ones for a sign of room."""
        return not self._open and bool(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------ inside
    def _end_turn(self, task_id: str) -> None:
        self._turns.pop(task_id, None)
        if task_id in self._placing:
            self._placing.discard(task_id)
            self._pump()

    def _probe(self) -> None:
        """A sign of room: one more task may try."""
        self._retry_at = float("inf")
        self._probes = min(self._probes + 1, self.at_once)
        self._pump()

    def _pump(self) -> None:
        """Give turns in order while fewer than ``at_once`` negotiate: all while open, one per probe if not."""
        while len(self._placing) < self.at_once and (self._open or self._probes):
            ready = [t for t in self._waiting if t in self._turns]
            if not ready:
                return
            head = min(ready, key=self._keys.__getitem__)
            if any(self._keys[t] < self._keys[head] for t in self._waiting if t not in self._turns):
                return  # an earlier task is not asking yet (it is between turns): keep its place
            if not self._open:
                self._probes -= 1
            self._waiting.discard(head)
            self._placing.add(head)
            self._turns[head].set()

    def _kick_loop(self) -> None:
        self._kick.set()
