"""A requester whose peer table is still empty waits, bounded, for adverts.

Trio's MockClock: the wait and the advert's arrival are in trio time, so the
test runs in milliseconds. The store is real SQLite; the provider is absent
(its stream fails to open), which is enough to see that placement went on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from peerd.jobs.localpipe import PipeEnd
from peerd.jobs.requester import Candidate, Requester, RequesterSettings
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import Store
from protocol.messages import JobSpec, TaskState
from protocol.signing import Signer

SPEC = JobSpec(image="peerd-test/busybox:1", command=("true",))
PROVIDER = Signer.generate().peer_id


def wall() -> float:
    return 1_700_000_000.0 + trio.current_time()


async def place(tmp_path: Path, *, advert_at: float | None, peer_wait: float = 10.0
                ) -> tuple[str, Store, TaskTracker, list[str], list[float]]:
    """Submit one job; the provider's advert is accepted ``advert_at`` seconds (trio time) into the wait for
    peers, at once (0), or never (None)."""
    tried: list[str] = []
    waiting_seen: list[float] = []
    start = trio.current_time()
    table: list[Candidate] = [Candidate(PROVIDER, [])] if advert_at == 0.0 else []
    accepted = trio.Event()

    async def advert_arrives(at: float) -> None:
        await trio.sleep(at)  # the advert's arrival, scheduled on the mock clock (not a wait)
        table.append(Candidate(PROVIDER, []))
        accepted.set()

    @asynccontextmanager
    async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        tried.append(peer_id)
        raise OSError("no route to the provider")
        yield  # pragma: no cover - makes this an async generator

    tracker = TaskTracker()
    async with Store.open(tmp_path / "r.db") as store, trio.open_nursery() as nursery:
        requester = Requester(
            signer=Signer.generate(), store=store, tracker=tracker, candidates=lambda spec, now, local: list(table),
            open_stream=open_stream, peers_changed=accepted.wait, clock=wall,
            settings=RequesterSettings(max_attempts=1, placement_deadline=60, peer_wait=peer_wait),
        )
        await nursery.start(requester.run)
        task_id = await requester.submit(SPEC)
        # Bounded by the placement deadline, in trio time. (No fail_after here: the mock clock jumps to the
        # nearest deadline whenever trio waits on SQLite's thread, so one would fire at once.)
        async for event in tracker.follow_events(task_id):
            if "waiting for peers" in event.detail and not waiting_seen:
                waiting_seen.append(trio.current_time() - start)
                if advert_at:
                    nursery.start_soon(advert_arrives, advert_at)
        nursery.cancel_scope.cancel()
        return task_id, store, tracker, tried, waiting_seen


async def test_an_advert_arriving_during_the_wait_is_used(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    task_id, store, tracker, tried, waiting_seen = await place(tmp_path, advert_at=3.0)
    assert waiting_seen, "the task's status never said it was waiting for peers"
    assert tried == [PROVIDER]  # placement went on with the provider that appeared
    assert trio.current_time() - start < 4.0  # woken by the advert (at 3 s), not by a poll or the 10 s bound


async def test_with_no_peer_at_all_it_ends_not_placed_after_the_bounded_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    task_id, store, tracker, tried, waiting_seen = await place(tmp_path, advert_at=None, peer_wait=5.0)
    elapsed = trio.current_time() - start
    assert waiting_seen and tried == []
    assert 5.0 <= elapsed < 6.0
    async with Store.open(tmp_path / "r.db") as reopened:
        record = await reopened.get_task(task_id)
    assert record is not None and record.state is TaskState.NOT_PLACED
    assert "no provider in the peer table" in record.detail


async def test_a_known_provider_means_no_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    _, _, _, tried, waiting_seen = await place(tmp_path, advert_at=0.0)
    assert tried == [PROVIDER] and waiting_seen == []
    assert trio.current_time() - start < 1.0
