"""Helpers for tests that talk to a real ControlServer on a real Unix socket."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from peerd.control.client import ControlClient
from peerd.control.server import ControlServer
from protocol.codec import FrameDecoder, decode_as, encode, frame
from protocol.control import request
from protocol.messages import ControlResponse
from protocol.schema import Value

from .stub import StubOps


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory: AF_UNIX paths must stay under 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="peerd-ctl-") as name:
        yield Path(name)


@dataclass
class Daemon:
    path: Path
    ops: StubOps


@pytest.fixture
async def daemon(nursery: trio.Nursery, sock_dir: Path) -> Daemon:
    """A real ControlServer on ``<sock_dir>/control.sock`` over a StubOps."""
    ops = StubOps()
    path = sock_dir / "control.sock"
    await nursery.start(ControlServer(path, ops).run)
    return Daemon(path, ops)


async def call(path: Path, command: str, args: dict[str, Value] | None = None) -> Value:
    """One request with the real blocking client, run in a thread."""

    def run() -> Value:
        with ControlClient(path, timeout=10) as client:
            return client.call(command, args, no_timeout=True)

    return await trio.to_thread.run_sync(run)


class RawClient:
    """Speaks frames by hand, to send what a real client never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(64 << 20)

    @classmethod
    async def open(cls, path: Path) -> RawClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def send_request(self, request_id: int, command: str, args: dict[str, Value]) -> None:
        await self.stream.send_all(frame(encode(request(request_id, command, args))))

    async def hello(self) -> ControlResponse:
        await self.send_request(1, "hello", {"version": 1, "client": "raw-test"})
        return await self.response()

    async def response(self) -> ControlResponse:
        """The next response; fails the test if the connection closes first."""
        frame = await self.next_frame()
        assert frame is not None, "the daemon closed the connection instead of answering"
        response = decode_as(frame, ControlResponse)
        assert isinstance(response, ControlResponse)
        return response

    async def next_frame(self) -> bytes | None:
        with trio.fail_after(10):
            while (frame := self.decoder.next_frame()) is None:
                if self.decoder.closed:
                    return None
                try:
                    data = await self.stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    data = b""
                self.decoder.receive_data(data)
            return frame

    async def closed_by_daemon(self) -> bool:
        """True if the daemon closes the connection with no further frame."""
        return await self.next_frame() is None

    async def expect_refusal(self, code: str) -> None:
        """An error response with ``code`` (id 0), then the daemon closes."""
        response = await self.response()
        assert response.error is not None and response.error.code == code, response
        assert response.id == 0
        assert await self.closed_by_daemon()

    async def aclose(self) -> None:
        await self.stream.aclose()
