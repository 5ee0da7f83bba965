"""Serving chunks to a slow fetcher: the server's patience counts progress, not only wants.

A fetcher asks for its whole window at once and then, once everything is asked, sends nothing until
``blob_done``: a server that timed out on a quiet stream would cut a slow but steady fetcher off while
the last chunks are still going out. Lockstep streams: a write returns only when the other side has
read it, as a flow-controlled libp2p stream's writes do once its window is full.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import trio
import trio.testing

from peerd.data.blobstore import ChunkStore
from peerd.data.transfer import ServeCounters, serve_blobs
from peerd.p2p.errors import StreamTimeout
from protocol.blobxfer import BlobFetcher, VerifiedChunk
from protocol.codec import NEED_DATA
from tests.data.test_jobdata import PROVIDER, MemoryStream


class TimedStream(MemoryStream):
    """A memory stream whose reads keep their deadline, as a libp2p stream's do."""

    async def read(self, max_bytes: int, *, timeout: float | None = None) -> bytes:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            return await super().read(max_bytes)
        assert scope.cancelled_caught
        raise StreamTimeout(f"nothing in {timeout}s")

TASK = "t-slow-fetcher"
CHUNKS = 5
TIMEOUT = 1.0
PAUSE = 0.3  # between the chunks the fetcher takes: all of them take longer than TIMEOUT


async def _allow(peer: str, task_id: str) -> bool:
    return True


async def _store_with_chunks(root: Path) -> tuple[ChunkStore, list[bytes]]:
    store = await ChunkStore.open(root)
    datas = [os.urandom(64 << 10) for _ in range(CHUNKS)]
    digests = [hashlib.sha256(data).digest() for data in datas]
    await store.pin(TASK, digests)
    for digest, data in zip(digests, datas, strict=True):
        await store.put(digest, data)
    return store, digests


async def _slow_fetch(stream: MemoryStream, digests: list[bytes], pause: float) -> list[bytes]:
    machine = BlobFetcher(TASK, digests, window=CHUNKS)
    want = machine.next_want()
    assert want is not None
    await stream.write(want)  # everything at once: no want follows
    got = []
    while len(got) < len(digests):
        await trio.sleep(pause)  # a slow fetcher (the behaviour under test, not a wait for a condition)
        while (event := machine.next_event()) is NEED_DATA:
            data = await stream.read(1 << 20)
            assert data, "the server ended the stream early"
            machine.receive_data(data)
        assert isinstance(event, VerifiedChunk)
        got.append(event.digest)
    await stream.write(machine.finish())
    return got


async def test_a_slow_fetcher_that_keeps_taking_chunks_is_served_to_the_end(tmp_path: Path) -> None:
    store, digests = await _store_with_chunks(tmp_path / "blobs")
    ours, theirs = trio.testing.lockstep_stream_pair()
    counters = ServeCounters()
    got: list[bytes] = []

    async def fetcher() -> None:
        got.extend(await _slow_fetch(MemoryStream(ours), digests, PAUSE))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher)
            await serve_blobs(TimedStream(theirs), PROVIDER, store, _allow, timeout=TIMEOUT, counters=counters)
    assert got == digests
    assert (counters.chunks, counters.broken) == (CHUNKS, 0)
    await store.close()


async def test_a_fetcher_that_asks_and_then_takes_nothing_is_timed_out(tmp_path: Path) -> None:
    store, digests = await _store_with_chunks(tmp_path / "blobs")
    ours, theirs = trio.testing.lockstep_stream_pair()
    counters = ServeCounters()
    machine = BlobFetcher(TASK, digests, window=CHUNKS)
    want = machine.next_want()
    assert want is not None

    async def stalled() -> None:
        await MemoryStream(ours).write(want)  # then never reads

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stalled)
            await serve_blobs(TimedStream(theirs), PROVIDER, store, _allow, timeout=TIMEOUT, counters=counters)
    assert (counters.broken, counters.chunks) == (1, 0)  # the chunk it never took timed the write out
    await store.close()
