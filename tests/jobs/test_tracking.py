"""The requester's live task view: log followers keep their place by sequence number."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from peerd.jobs.tracking import MAX_EVENTS, LogGap, TaskTracker
from protocol.messages import LogChunk, LogStream, TaskState

TASK = "t1"


def chunk(seq: int, size: int = 10, task_id: str = TASK) -> LogChunk:
    return LogChunk(task_id=task_id, stream=LogStream.STDOUT, seq=seq, data=bytes([65 + seq % 26]) * size)


async def take(items: AsyncIterator[LogChunk | LogGap], n: int) -> list[LogChunk | LogGap]:
    with trio.fail_after(5):
        return [await anext(items) for _ in range(n)]


def seqs(items: list[LogChunk | LogGap]) -> list[int | tuple[int, int]]:
    return [(i.first, i.end) if isinstance(i, LogGap) else i.seq for i in items]


async def test_trimming_while_a_follower_reads_loses_no_chunk_still_held() -> None:
    tracker = TaskTracker(log_limit=30)  # three 10-byte chunks
    for seq in range(3):
        tracker.log(TASK, chunk(seq))
    follower = tracker.follow_logs(TASK, follow=True)
    assert seqs(await take(follower, 3)) == [0, 1, 2]
    # two more arrive: 0 and 1 are trimmed. Walking by list index, the follower would skip 3 and 4.
    tracker.log(TASK, chunk(3))
    tracker.log(TASK, chunk(4))
    assert seqs(await take(follower, 2)) == [3, 4]
    tracker.finish(TASK, TaskState.SUCCEEDED, "done")
    with trio.fail_after(5):
        assert [item async for item in follower] == []


async def test_a_follower_left_behind_gets_an_explicit_gap_then_the_rest_in_order() -> None:
    tracker = TaskTracker(log_limit=30)
    tracker.log(TASK, chunk(0))
    follower = tracker.follow_logs(TASK, follow=True)
    assert seqs(await take(follower, 1)) == [0]
    for seq in range(1, 8):  # the follower sleeps; only 5, 6, 7 are still held
        tracker.log(TASK, chunk(seq))
    items = await take(follower, 4)
    assert seqs(items) == [(1, 5), 5, 6, 7]
    gap = items[0]
    assert isinstance(gap, LogGap) and gap.count == 4
    assert gap.render() == b"[... 4 log chunks dropped ...]\n"


async def test_a_late_reader_sees_what_was_trimmed_before_it_came_as_a_gap() -> None:
    tracker = TaskTracker(log_limit=20)
    for seq in range(5):
        tracker.log(TASK, chunk(seq))
    tracker.finish(TASK, TaskState.SUCCEEDED, "")
    with trio.fail_after(5):
        items = [item async for item in tracker.follow_logs(TASK, follow=False)]
    assert seqs(items) == [(0, 3), 3, 4]


async def test_chunks_that_never_arrived_show_as_a_gap() -> None:
    tracker = TaskTracker()
    tracker.log(TASK, chunk(0))
    tracker.log(TASK, chunk(3))  # the provider had trimmed 1 and 2 before the requester resumed
    tracker.finish(TASK, TaskState.SUCCEEDED, "")
    with trio.fail_after(5):
        assert seqs([i async for i in tracker.follow_logs(TASK, follow=True)]) == [0, (1, 3), 3]


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=60),
    steps=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 25), st.integers(0, 6)), max_size=25),
)
def test_any_interleaving_yields_each_chunk_once_in_order_or_a_gap_for_it(
    limit: int, steps: list[tuple[int, int, int]]
) -> None:
    """Produce and consume in any order: every sequence number is either read or inside exactly
    one gap, in order; the chunks read are exactly those the tracker received."""

    async def main() -> None:
        tracker = TaskTracker(log_limit=limit)
        tracker.open(TASK)
        follower = tracker.follow_logs(TASK, follow=True)
        seen: list[LogChunk | LogGap] = []
        sent: dict[int, bytes] = {}
        position = 0  # one past the last sequence number the follower accounted for
        seq = 0
        with trio.fail_after(10):
            for produce, size, consume in steps:
                for _ in range(produce):
                    tracker.log(TASK, chunk(seq, size))
                    sent[seq] = chunk(seq, size).data
                    seq += 1
                for _ in range(consume):
                    if position >= tracker.next_log_seq(TASK):
                        break  # nothing new: reading now would wait
                    item = await anext(follower)
                    seen.append(item)
                    position = item.end if isinstance(item, LogGap) else item.seq + 1
            tracker.finish(TASK, TaskState.SUCCEEDED, "")
            seen += [item async for item in follower]
        covered: list[int] = []
        for item in seen:
            if isinstance(item, LogGap):
                assert item.count > 0
                covered += range(item.first, item.end)
            else:
                assert item.data == sent[item.seq]
                covered.append(item.seq)
        assert covered == list(range(seq))
        assert not any(isinstance(a, LogGap) and isinstance(b, LogGap) for a, b in itertools.pairwise(seen))

    trio.run(main)


async def test_a_resumed_stream_repeating_chunks_is_deduplicated() -> None:
    tracker = TaskTracker()
    for seq in (0, 1, 2, 1, 2, 3):
        tracker.log(TASK, chunk(seq))
    assert tracker.next_log_seq(TASK) == 4
    tracker.finish(TASK, TaskState.SUCCEEDED, "")
    with trio.fail_after(5):
        assert seqs([i async for i in tracker.follow_logs(TASK, follow=False)]) == [0, 1, 2, 3]


async def test_a_follower_without_follow_returns_what_is_held_at_once() -> None:
    tracker = TaskTracker()
    tracker.log(TASK, chunk(0))
    with trio.fail_after(5):
        assert seqs([i async for i in tracker.follow_logs(TASK, follow=False)]) == [0]


async def test_a_live_follower_ends_when_the_task_does() -> None:
    tracker = TaskTracker()
    tracker.open(TASK)
    got: list[LogChunk | LogGap] = []

    async def follow() -> None:
        async for item in tracker.follow_logs(TASK, follow=True):
            got.append(item)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            tracker.log(TASK, chunk(0))
            tracker.log(TASK, chunk(1))
            tracker.finish(TASK, TaskState.FAILED, "exit 1")
    assert seqs(got) == [0, 1]


async def test_event_followers_keep_their_place_when_old_events_are_trimmed() -> None:
    tracker = TaskTracker()
    tracker.state(TASK, TaskState.PLACING, "0")
    events = tracker.follow_events(TASK)
    with trio.fail_after(5):
        assert (await anext(events)).detail == "0"
        for n in range(1, MAX_EVENTS + 10):  # more than the buffer holds: the oldest are trimmed
            tracker.state(TASK, TaskState.RUNNING, str(n))
        nxt = await anext(events)
    # the follower had read event 0; events 1..9 were trimmed, so it resumes at the oldest held
    assert nxt.detail == "10"
    tracker.finish(TASK, TaskState.SUCCEEDED, "end")
    with trio.fail_after(5):
        rest = [e.detail async for e in events]
    assert rest == [str(n) for n in range(11, MAX_EVENTS + 10)] + ["end"]


async def test_finished_tasks_beyond_the_newest_few_are_evicted() -> None:
    tracker = TaskTracker(keep_finished=2)
    for n in range(3):
        tracker.log(f"t{n}", chunk(0, task_id=f"t{n}"))
        tracker.finish(f"t{n}", TaskState.SUCCEEDED, "")
    assert [tracker.holds(f"t{n}") for n in range(3)] == [False, True, True]
    with trio.fail_after(5):
        assert [i async for i in tracker.follow_logs("t0", follow=True)] == []  # evicted: ends at once
        assert [e async for e in tracker.follow_events("t0")] == []
        await tracker.wait_final("t0")
    assert not tracker.holds("t0")  # reading did not bring it back


async def test_a_reader_of_a_task_not_opened_yet_waits_for_it() -> None:
    """After a restart the control socket may ask before the requester re-opened the task."""
    tracker = TaskTracker()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.wait_final, TASK)
            await trio.testing.wait_all_tasks_blocked()
            tracker.open(TASK)
            tracker.finish(TASK, TaskState.SUCCEEDED, "")
        assert [i async for i in tracker.follow_logs("never", follow=False)] == []
    assert not tracker.holds("never")


async def test_finished_tasks_are_evicted_after_the_linger_time() -> None:
    now = [0.0]
    tracker = TaskTracker(keep_finished=100, linger=60.0, clock=lambda: now[0])
    tracker.finish("old", TaskState.SUCCEEDED, "")
    tracker.open("running")
    now[0] = 59.0
    tracker.log("running", chunk(0, task_id="running"))
    assert tracker.holds("old")
    now[0] = 61.0
    tracker.log("running", chunk(1, task_id="running"))
    assert not tracker.holds("old") and tracker.holds("running")  # unfinished tasks are never evicted


async def test_a_reader_already_following_an_evicted_task_ends_normally() -> None:
    tracker = TaskTracker(keep_finished=0)
    tracker.log(TASK, chunk(0))
    follower = tracker.follow_logs(TASK, follow=True)
    assert seqs(await take(follower, 1)) == [0]
    tracker.log(TASK, chunk(1))
    tracker.finish(TASK, TaskState.SUCCEEDED, "")
    assert not tracker.holds(TASK)
    with trio.fail_after(5):
        assert seqs([i async for i in follower]) == [1]


async def test_waiting_on_a_task_returns_when_it_finishes() -> None:
    tracker = TaskTracker()
    tracker.open(TASK)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.wait_final, TASK)
            await trio.testing.wait_all_tasks_blocked()
            tracker.finish(TASK, TaskState.CANCELLED, "")
