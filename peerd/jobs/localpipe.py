"""An in-process byte pipe with the task stream's interface, for ``--local`` jobs.

A job placed on the node's own provider still goes through the whole task
protocol (offer, signed lease, receipt); only the transport is a pair of
in-memory trio streams instead of a libp2p stream.
"""

from __future__ import annotations

import trio
import trio.testing


class PipeEnd:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, *, timeout: float | None = None) -> bytes:
        """``timeout`` is accepted for the stream interface; callers bound the wait."""
        try:
            return await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            return b""

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def close(self) -> None:
        await self._stream.aclose()

    async def reset(self) -> None:
        await self._stream.aclose()


def pipe_pair() -> tuple[PipeEnd, PipeEnd]:
    left, right = trio.testing.memory_stream_pair()
    return PipeEnd(left), PipeEnd(right)
