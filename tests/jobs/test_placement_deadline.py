"""The placement deadline is on trio's clock; the wall clock only stamps what is signed and recorded.

A wall clock that jumps (NTP, a suspended laptop) must neither end placement at once nor let it run past
``placement_deadline``. The store is real SQLite; the providers are stand-ins: one whose stream fails to open,
or one that takes the request and never answers. Trio time moves only when a test jumps it (a MockClock
flowing at the real rate, so the tests' own bounds still hold), never by autojump, which would move it while
the store works in a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path

import pytest
import trio
import trio.testing

from peerd.jobs.localpipe import PipeEnd, pipe_pair
from peerd.jobs.requester import Candidate, OpenStream, Requester, RequesterSettings
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import AttemptOutcome, Store
from protocol.messages import JobSpec, TaskState
from protocol.signing import Signer

SPEC = JobSpec(image="peerd-test/busybox:1", command=("true",))
FIRST, SECOND = Signer.generate().peer_id, Signer.generate().peer_id
WALL = 1_700_000_000.0


@pytest.fixture
def flowing_clock() -> trio.testing.MockClock:
    """Trio time at the real rate, plus whatever a test jumps."""
    return trio.testing.MockClock(rate=1.0)


def candidates(spec: JobSpec, now: float, local: bool) -> list[Candidate]:
    return [Candidate(FIRST, []), Candidate(SECOND, [])]


@asynccontextmanager
async def requester(tmp_path: Path, open_stream: OpenStream, clock: Callable[[], float],
                    settings: RequesterSettings) -> AsyncIterator[tuple[Requester, Store]]:
    async with Store.open(tmp_path / "r.db") as store, trio.open_nursery() as nursery:
        node = Requester(signer=Signer.generate(), store=store, tracker=TaskTracker(), candidates=candidates,
                         open_stream=open_stream, clock=clock, settings=settings)
        await nursery.start(node.run)
        yield node, store
        nursery.cancel_scope.cancel()


async def test_a_wall_clock_jumping_forward_does_not_end_placement(tmp_path: Path) -> None:
    hours: Iterator[int] = count()
    tried: list[str] = []

    def jumping() -> float:  # an hour later at every reading
        return WALL + 3600.0 * next(hours)

    @asynccontextmanager
    async def unreachable(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        tried.append(peer_id)
        raise OSError("no route to the provider")
        yield  # pragma: no cover - makes this an async generator

    settings = RequesterSettings(max_attempts=2, placement_deadline=60)
    async with requester(tmp_path, unreachable, jumping, settings) as (node, store):
        task_id = await node.submit(SPEC)
        with trio.fail_after(10):
            await node.tracker.wait_final(task_id)
        record = await store.get_task(task_id)
        attempts = await store.attempts(task_id)
    assert tried == [FIRST, SECOND]  # both were asked: the wall clock's jumps are no deadline
    assert [a.outcome for a in attempts] == [AttemptOutcome.UNREACHABLE] * 2
    assert record is not None and record.state is TaskState.NOT_PLACED
    assert "not placed after 2 attempt(s)" in record.detail


async def test_the_deadline_passes_on_trios_clock_while_the_wall_clock_stands_still(
    tmp_path: Path, flowing_clock: trio.testing.MockClock
) -> None:
    asked: list[str] = []
    opened, provider_ends = trio.open_memory_channel[PipeEnd](2)

    @asynccontextmanager
    async def silent(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        """A provider that takes the request and never answers."""
        asked.append(peer_id)
        ours, theirs = pipe_pair()
        opened.send_nowait(theirs)
        try:
            yield ours
        finally:
            await ours.close()

    settings = RequesterSettings(max_attempts=3, placement_deadline=30, provider_timeout=120, io_timeout=120)
    async with requester(tmp_path, silent, lambda: WALL, settings) as (node, store):
        task_id = await node.submit(SPEC)
        with trio.fail_after(10):
            first = await provider_ends.receive()
            assert await first.read(1 << 16)  # the request reached the first provider, which keeps silent
        flowing_clock.jump(31)  # past the placement deadline on trio's clock; the wall clock has not moved
        with trio.fail_after(10):
            await node.tracker.wait_final(task_id)
        record = await store.get_task(task_id)
        attempts = await store.attempts(task_id)
    assert asked == [FIRST]  # the second provider was never asked: the deadline had passed
    assert [(a.outcome, a.detail) for a in attempts] == [(AttemptOutcome.TIMEOUT, "placement deadline passed")]
    assert record is not None and record.state is TaskState.NOT_PLACED
