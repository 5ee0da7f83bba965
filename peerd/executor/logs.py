"""Bounded log tails with live followers. Pure trio, no I/O.

``LogTail`` keeps the last ``limit`` bytes of each stream (stdout, stderr) as
the chunks arrived, numbered in arrival order. ``follow()`` yields what is
still retained and then every new chunk until the tail is closed; a follower
that falls more than ``limit`` bytes behind skips what was trimmed (it never
blocks the producer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import trio

from peerd.executor.contract import LogChunk

STREAMS = ("stdout", "stderr")


class LogTail:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("log limit must be >= 1 byte")
        self._limit = limit
        self._chunks: dict[str, deque[tuple[int, bytes]]] = {s: deque() for s in STREAMS}
        self._sizes = dict.fromkeys(STREAMS, 0)
        self._dropped = dict.fromkeys(STREAMS, 0)
        self._seq = 0
        self._closed = False
        self._changed = trio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def dropped(self, stream: str) -> int:
        """Bytes of ``stream`` trimmed away so far."""
        return self._dropped[stream]

    def append(self, stream: str, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("log tail is closed")
        if not data:
            return
        self._seq += 1
        chunks = self._chunks[stream]
        chunks.append((self._seq, data))
        self._sizes[stream] += len(data)
        self._trim(stream)
        self._wake()

    def _trim(self, stream: str) -> None:
        chunks = self._chunks[stream]
        while self._sizes[stream] > self._limit:
            seq, oldest = chunks[0]
            excess = self._sizes[stream] - self._limit
            if len(oldest) <= excess:
                chunks.popleft()
                cut = len(oldest)
            else:
                chunks[0] = (seq, oldest[excess:])
                cut = excess
            self._sizes[stream] -= cut
            self._dropped[stream] += cut

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def tail(self, stream: str) -> bytes:
        return b"".join(data for _, data in self._chunks[stream])

    def _after(self, cursor: int) -> list[tuple[int, str, bytes]]:
        fresh: list[tuple[int, str, bytes]] = []
        for stream in STREAMS:
            for seq, data in reversed(self._chunks[stream]):  # newest first: stop at the cursor
                if seq <= cursor:
                    break
                fresh.append((seq, stream, data))
        fresh.sort()
        return fresh

    async def follow(self) -> AsyncIterator[LogChunk]:
        cursor = 0
        while True:
            changed = self._changed
            for seq, stream, data in self._after(cursor):
                cursor = seq
                yield LogChunk(stream, data)
            if self._closed and not self._after(cursor):
                return
            await changed.wait()
