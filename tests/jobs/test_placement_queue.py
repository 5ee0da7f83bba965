"""The requester's queue on its own: who negotiates next, and what reopens it (``peerd.jobs.queue``)."""

from __future__ import annotations

import random

import trio
import trio.testing

from peerd.jobs.queue import PlacementQueue


async def _turns(queue: PlacementQueue, tasks: list[str], nursery: trio.Nursery, got: list[str]) -> list[str]:
    """Every task asks for its turn; ``got`` lists the turns as they come."""

    async def ask(task_id: str) -> None:
        await queue.turn(task_id)
        got.append(task_id)

    for task_id in tasks:
        nursery.start_soon(ask, task_id)
    await trio.testing.wait_all_tasks_blocked()
    return got


async def test_turns_go_by_priority_then_submission_and_at_most_at_once() -> None:
    queue = PlacementQueue(at_once=2)
    for task_id, priority in (("a", 0), ("b", 0), ("c", 5), ("d", 0)):
        queue.join(task_id, priority)
    async with trio.open_nursery() as nursery:
        got = await _turns(queue, ["d", "b", "a", "c"], nursery, [])
        assert sorted(got) == ["a", "c"]  # the first two in order (high priority first), whoever asked first
        assert [queue.position(t) for t in "abcd"] == [None, 1, None, 2]
        queue.placed("c")
        await trio.testing.wait_all_tasks_blocked()
        assert got[2:] == ["b"]
        queue.leave("a")
        await trio.testing.wait_all_tasks_blocked()
        assert got[2:] == ["b", "d"]


async def test_a_full_round_closes_the_queue_until_a_sign_of_room_lets_one_task_try() -> None:
    queue = PlacementQueue(at_once=4, rng=random.Random(1))
    for task_id in "abc":
        queue.join(task_id)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        got = await _turns(queue, ["a"], nursery, [])
        queue.full("a")  # no room anywhere: back to its place, and the queue closes
        await _turns(queue, ["a", "b", "c"], nursery, got)
        assert got == ["a"] and queue.position("a") == 1
        queue.wake("provider-1")  # one of our jobs ended there: one probe, the head
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["a", "a"] and queue.hint == "provider-1"
        queue.placed("a")  # the probe found room: open again, the rest may go
        await trio.testing.wait_all_tasks_blocked()
        assert got[:2] == ["a", "a"] and sorted(got[2:]) == ["b", "c"]  # both at once
        nursery.cancel_scope.cancel()


async def test_a_closed_queue_reopens_by_itself_after_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    queue = PlacementQueue(at_once=1, backoff=1.0, backoff_max=4.0, rng=random.Random(2))
    queue.join("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        await queue.turn("a")
        delays = []
        for _ in range(4):
            queue.full("a")
            began = trio.current_time()
            await queue.turn("a")  # no event comes: the backoff timer lets it try again
            delays.append(trio.current_time() - began)
        assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
        assert delays[3] <= 4.0  # capped at backoff_max
        queue.placed("a")
        nursery.cancel_scope.cancel()


async def test_an_advert_reopens_the_queue_after_a_short_jitter(autojump_clock: trio.testing.MockClock) -> None:
    queue = PlacementQueue(at_once=1, backoff=30.0, rng=random.Random(3))
    queue.join("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        await queue.turn("a")
        queue.full("a")
        began = trio.current_time()
        queue.wake(jitter=True)
        await queue.turn("a")
        assert trio.current_time() - began <= 0.25  # not the 15-30 s backoff
        nursery.cancel_scope.cancel()


async def test_a_task_between_its_turns_keeps_its_place() -> None:
    queue = PlacementQueue(at_once=1)
    queue.join("a")
    queue.join("b")
    async with trio.open_nursery() as nursery:
        got = await _turns(queue, ["a"], nursery, [])
        queue.full("a")  # "a" is writing down that it waits; "b" asks meanwhile
        await _turns(queue, ["b"], nursery, got)
        queue.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["a"]  # the probe is kept for "a", the head
        await _turns(queue, ["a"], nursery, got)
        assert got == ["a", "a"]
        queue.leave("a")
        queue.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["a", "a", "b"]
