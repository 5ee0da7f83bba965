"""Bounded log tails and their followers (pure trio)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerd.executor.contract import LogChunk
from peerd.executor.logs import LogTail


def test_each_stream_keeps_its_last_bytes() -> None:
    tail = LogTail(limit=10)
    tail.append("stdout", b"0123456789")
    tail.append("stderr", b"e")
    tail.append("stdout", b"abcd")
    assert tail.tail("stdout") == b"456789abcd" and tail.tail("stderr") == b"e"
    tail.append("stdout", b"X" * 25)
    assert tail.tail("stdout") == b"X" * 10 and tail.dropped("stdout") == 29


async def test_a_follower_gets_history_then_live_chunks_in_order() -> None:
    tail = LogTail(limit=100)
    tail.append("stdout", b"a")
    tail.append("stderr", b"b")
    got: list[LogChunk] = []

    async def follow() -> None:
        async for chunk in tail.follow():
            got.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [("stdout", b"a"), ("stderr", b"b")]
        tail.append("stdout", b"c")
        tail.append("stdout", b"d")
        await trio.testing.wait_all_tasks_blocked()
        assert got[2:] == [("stdout", b"c"), ("stdout", b"d")]
        tail.close()
    assert len(got) == 4  # the follower ended with the tail


async def test_a_late_follower_of_a_closed_tail_gets_what_is_retained() -> None:
    tail = LogTail(limit=3)
    tail.append("stdout", b"hello")
    tail.close()
    assert [c async for c in tail.follow()] == [LogChunk("stdout", b"llo")]
    with pytest.raises(RuntimeError):
        tail.append("stdout", b"more")
