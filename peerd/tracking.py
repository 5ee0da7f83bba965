"""Live view of the requester's tasks, for ``wait``, ``logs -f`` and events.

The store holds the durable record; the tracker holds what only matters while
the daemon runs: log chunks as they arrive (bounded), state events, and an
event per task that fires when it reaches a final state. Followers wait on a
per-task "changed" event rather than polling.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import trio

from protocol.messages import LogChunk, TaskState


@dataclass(frozen=True)
class TaskEvent:
    state: TaskState
    detail: str


@dataclass
class _Live:
    logs: list[LogChunk] = field(default_factory=list)
    log_bytes: int = 0
    dropped: int = 0
    events: list[TaskEvent] = field(default_factory=list)
    final: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class TaskTracker:
    def __init__(self, log_limit: int = 4 << 20) -> None:
        self.log_limit = log_limit
        self._tasks: dict[str, _Live] = {}

    def open(self, task_id: str) -> None:
        self._tasks.setdefault(task_id, _Live())

    def _live(self, task_id: str) -> _Live:
        return self._tasks.setdefault(task_id, _Live())

    def state(self, task_id: str, state: TaskState, detail: str) -> None:
        live = self._live(task_id)
        live.events.append(TaskEvent(state, detail))
        del live.events[:-256]
        live.wake()

    def log(self, task_id: str, chunk: LogChunk) -> None:
        live = self._live(task_id)
        if live.logs and chunk.seq <= live.logs[-1].seq:
            return  # a resumed stream may repeat what we already have
        live.logs.append(chunk)
        live.log_bytes += len(chunk.data)
        while live.log_bytes > self.log_limit and len(live.logs) > 1:
            live.log_bytes -= len(live.logs.pop(0).data)
            live.dropped += 1
        live.wake()

    def next_log_seq(self, task_id: str) -> int:
        live = self._tasks.get(task_id)
        return live.logs[-1].seq + 1 if live and live.logs else 0

    def finish(self, task_id: str, state: TaskState, detail: str) -> None:
        live = self._live(task_id)
        live.events.append(TaskEvent(state, detail))
        live.final = True
        live.done.set()
        live.wake()

    async def wait_final(self, task_id: str) -> None:
        await self._live(task_id).done.wait()

    async def follow_logs(self, task_id: str, *, follow: bool) -> AsyncIterator[LogChunk]:
        """Every chunk kept so far, then (with ``follow``) new ones until the task ends."""
        live = self._live(task_id)
        index = 0
        while True:
            while index < len(live.logs):
                yield live.logs[index]
                index += 1
            if not follow or live.final:
                return
            await live.changed.wait()
            live = self._live(task_id)

    async def follow_events(self, task_id: str) -> AsyncGenerator[TaskEvent, None]:
        live = self._live(task_id)
        index = 0
        while True:
            while index < len(live.events):
                yield live.events[index]
                index += 1
            if live.final:
                return
            await live.changed.wait()


__all__ = ["TaskEvent", "TaskTracker"]
