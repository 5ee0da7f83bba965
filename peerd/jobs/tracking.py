"""Live view of the requester's tasks, for ``wait``, ``logs -f`` and events.

The store holds the durable record; the tracker holds what only matters while
the daemon runs: log chunks as they arrive (bounded), state events, and an
event per task that fires when it reaches a final state. Followers wait on a
per-task "changed" event rather than polling.

Followers keep their place by sequence number, never by position in the
buffer, so trimming old chunks cannot make one skip a chunk still held. A
follower that falls behind the trimmed part of the log gets a ``LogGap``
naming the sequence numbers it will never see, then carries on in order.
Events are numbered the same way; trimmed events are skipped (they are also
in the store).

Memory is bounded: each task's log buffer holds at most ``log_limit`` bytes
(and always its newest chunk), each task keeps its last ``MAX_EVENTS`` events,
and a finished task's buffers are evicted once ``keep_finished`` newer tasks
have finished or ``linger`` seconds have passed (checked whenever the tracker
is written to). After that only the store's result tails remain; a follower
already reading keeps its reference and ends normally, and a reader of a
recently evicted task (the last ``MAX_EVICTED`` remembered) ends at once. A
reader of a task not seen yet waits for it (after a restart the requester
opens its unfinished tasks a moment after the control socket is up), except a
non-following ``follow_logs``, which creates nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from protocol.messages import LogChunk, TaskState

MAX_EVENTS = 256
MAX_EVICTED = 4096


@dataclass(frozen=True)
class TaskEvent:
    state: TaskState
    detail: str


@dataclass(frozen=True)
class LogGap:
    """Chunks ``first`` .. ``end - 1`` were trimmed (or never arrived) before this follower saw them."""

    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first

    def render(self) -> bytes:
        """The line ``peerd logs`` shows in place of the missing chunks."""
        plural = "" if self.count == 1 else "s"
        return f"[... {self.count} log chunk{plural} dropped ...]\n".encode()


@dataclass
class _Live:
    logs: deque[LogChunk] = field(default_factory=deque)
    log_bytes: int = 0
    next_seq: int = 0  # one past the newest chunk received
    events: deque[TaskEvent] = field(default_factory=deque)
    events_seen: int = 0  # events ever recorded: the number of the next one
    final: bool = False
    finished_at: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def add_event(self, event: TaskEvent) -> None:
        self.events.append(event)
        self.events_seen += 1
        while len(self.events) > MAX_EVENTS:
            self.events.popleft()

    def events_from(self, number: int) -> tuple[int, list[TaskEvent]]:
        """Events numbered ``number`` and later still held, and the number of the first."""
        first_held = self.events_seen - len(self.events)
        start = max(number, first_held)
        return start, list(self.events)[start - first_held:]


class TaskTracker:
    def __init__(
        self,
        log_limit: int = 4 << 20,
        *,
        keep_finished: int = 16,
        linger: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_limit = log_limit
        self.keep_finished = keep_finished
        self.linger = linger
        self.clock = clock
        self._tasks: dict[str, _Live] = {}
        self._finished: deque[str] = deque()  # finished task ids, oldest first
        self._evicted: dict[str, None] = {}  # recently evicted task ids, oldest first (an ordered set)

    def open(self, task_id: str) -> None:
        self._live(task_id)

    def holds(self, task_id: str) -> bool:
        """Does the tracker still hold a live buffer for this task?"""
        return task_id in self._tasks

    def _live(self, task_id: str) -> _Live:
        """The task's buffers, created on first use."""
        self._evict()
        live = self._tasks.get(task_id)
        if live is None:
            self._evicted.pop(task_id, None)
            live = self._tasks[task_id] = _Live()
        return live

    def _reading(self, task_id: str) -> _Live | None:
        """The buffers a reader follows: None for a recently evicted (finished) task."""
        live = self._tasks.get(task_id)
        if live is None and task_id in self._evicted:
            return None
        return live or self._live(task_id)

    def state(self, task_id: str, state: TaskState, detail: str) -> None:
        live = self._live(task_id)
        live.add_event(TaskEvent(state, detail))
        live.wake()

    def log(self, task_id: str, chunk: LogChunk) -> None:
        live = self._live(task_id)
        if chunk.seq < live.next_seq:
            return  # a resumed stream may repeat what we already have
        live.logs.append(chunk)
        live.next_seq = chunk.seq + 1
        live.log_bytes += len(chunk.data)
        while live.log_bytes > self.log_limit and len(live.logs) > 1:
            live.log_bytes -= len(live.logs.popleft().data)
        live.wake()

    def next_log_seq(self, task_id: str) -> int:
        live = self._tasks.get(task_id)
        return live.next_seq if live is not None else 0

    def finish(self, task_id: str, state: TaskState, detail: str) -> None:
        live = self._live(task_id)
        live.add_event(TaskEvent(state, detail))
        if not live.final:
            live.final = True
            live.finished_at = self.clock()
            self._finished.append(task_id)
        live.done.set()
        live.wake()
        self._evict()

    def _evict(self) -> None:
        """Drop the buffers of tasks finished long enough ago, or beyond the newest ``keep_finished``."""
        now = self.clock()
        while self._finished:
            oldest = self._tasks.get(self._finished[0])
            if oldest is not None and len(self._finished) <= self.keep_finished \
                    and now - oldest.finished_at < self.linger:
                return
            evicted = self._finished.popleft()
            self._tasks.pop(evicted, None)
            self._evicted[evicted] = None
            while len(self._evicted) > MAX_EVICTED:
                del self._evicted[next(iter(self._evicted))]

    async def wait_final(self, task_id: str) -> None:
        """Returns once the task is final (at once if it was evicted)."""
        live = self._reading(task_id)
        if live is not None:
            await live.done.wait()

    async def follow_logs(self, task_id: str, *, follow: bool) -> AsyncIterator[LogChunk | LogGap]:
        """Every chunk kept so far, then (with ``follow``) new ones until the task ends.

        Chunks come in sequence order, each once; where chunks this follower
        has not seen were trimmed (or never arrived), a ``LogGap`` comes first.
        """
        live = self._reading(task_id) if follow else self._tasks.get(task_id)
        if live is None:
            return
        want = 0  # what was trimmed before this follower came shows as a gap too
        while True:
            changed = live.changed
            for chunk in self._chunks_from(live, want):
                if chunk.seq > want:
                    yield LogGap(want, chunk.seq)
                yield chunk
                want = chunk.seq + 1
            if not follow or (live.final and want >= live.next_seq):
                return
            await changed.wait()

    @staticmethod
    def _chunks_from(live: _Live, seq: int) -> list[LogChunk]:
        """The held chunks numbered ``seq`` or later (a snapshot: the deque may change meanwhile)."""
        fresh: list[LogChunk] = []
        for chunk in reversed(live.logs):  # newest first: stop at the follower's place
            if chunk.seq < seq:
                break
            fresh.append(chunk)
        fresh.reverse()
        return fresh

    async def follow_events(self, task_id: str) -> AsyncGenerator[TaskEvent, None]:
        live = self._reading(task_id)
        if live is None:
            return
        number = 0
        while True:
            changed = live.changed
            start, fresh = live.events_from(number)
            for event in fresh:
                yield event
            number = start + len(fresh)
            if live.final and number >= live.events_seen:
                return
            await changed.wait()


__all__ = ["MAX_EVENTS", "MAX_EVICTED", "LogGap", "TaskEvent", "TaskTracker"]
