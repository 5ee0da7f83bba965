"""Pumps bytes between a p2p stream and a negotiation machine (httpcore style).

``TaskChannel`` owns one stream and one ``protocol.negotiation`` machine. The
machine builds, checks, signs and frames every message it can build itself
(``channel.send_frame(channel.machine.accept(now=...))``); ``send`` forwards a
message made elsewhere (a provider's job makes its log chunks, Result and
Receipt proposal apart from any stream) through the same checks. The channel
reads until the machine yields the next message. Every read and write runs under a
deadline; the stream's errors are mapped here, once, to ``PeerGone`` (the
stream broke or closed) and ``PeerTimeout`` (nothing arrived in time).
Protocol violations surface as ``protocol.ProtocolError`` unchanged.

A stream raises only what its layer translated: the p2p ``Stream`` raises
``peerd.p2p.errors.StreamError`` / ``StreamTimeout`` (``peerd.p2p.streams``
translates libp2p's exceptions), the in-process pipe of ``--local`` jobs trio's
resource errors. Anything else is a bug and travels on to the per-connection
edge (the provider's stream handler, the requester's per-task task), which logs it.
"""

from __future__ import annotations

import logging
from typing import Generic, Protocol, TypeVar

import trio

from peerd.errors import PeerdError
from peerd.p2p.errors import StreamError, StreamTimeout
from protocol import ProtocolError
from protocol.codec import CLOSED, NEED_DATA
from protocol.messages import Message
from protocol.negotiation import Negotiation

log = logging.getLogger(__name__)

READ_CHUNK = 64 << 10

N = TypeVar("N", bound=Negotiation)


class ByteStream(Protocol):
    """What the p2p layer's stream wrapper offers."""

    async def read(self, max_bytes: int, *, timeout: float | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class TaskWireError(PeerdError):
    """The task stream failed."""


class PeerGone(TaskWireError):
    """The stream closed or broke before the conversation ended."""


class PeerTimeout(TaskWireError):
    """Nothing arrived, or could be sent, within the deadline."""


def single_error(group: BaseExceptionGroup, expected: tuple[type[Exception], ...]) -> Exception:
    """The one expected error inside a group raised by a nursery around a stream.

    Trio wraps every error leaving a nursery in an ExceptionGroup. When the
    group holds only errors of the ``expected`` types, the first is returned so
    the caller can handle it like a plain exception; anything else re-raises
    the group unchanged.
    """
    matched, rest = group.split(expected)
    if matched is None or rest is not None:
        raise group
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, Exception)
    return first


async def send_bytes(stream: ByteStream, data: bytes, timeout: float) -> None:
    """Write ``data`` under a deadline; PeerTimeout / PeerGone (the stream's errors, mapped once, here)."""
    try:
        with trio.fail_after(timeout):
            await stream.write(data)
    except trio.TooSlowError as exc:
        raise PeerTimeout(f"write timed out after {timeout:g}s") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise PeerGone(f"stream broke while writing: {exc}") from exc
    except StreamTimeout as exc:
        raise PeerTimeout(str(exc)) from exc
    except StreamError as exc:
        raise PeerGone(f"stream failed while writing: {exc}") from exc


async def receive_bytes(stream: ByteStream, timeout: float, max_bytes: int = READ_CHUNK) -> bytes:
    """Up to ``max_bytes`` bytes (``b""`` at EOF) within ``timeout``; PeerTimeout / PeerGone."""
    try:
        return await stream.read(max_bytes, timeout=timeout)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise PeerGone(f"stream broke while reading: {exc}") from exc
    except StreamTimeout as exc:
        raise PeerTimeout(str(exc)) from exc
    except StreamError as exc:
        raise PeerGone(f"stream failed while reading: {exc}") from exc


class TaskChannel(Generic[N]):
    """One task stream and the machine (``N``: the requester's or the provider's) that speaks on it."""

    def __init__(self, stream: ByteStream, machine: N, *, timeout: float) -> None:
        self.stream = stream
        self.machine = machine
        self.timeout = timeout

    async def send(self, msg: Message) -> None:
        """Forward a message made apart from the machine (it is checked, signed and framed there)."""
        await self._write(self.machine.send(msg))

    async def send_frame(self, data: bytes) -> None:
        """Send the bytes a machine helper produced (``accept``, ``propose_lease``, ``resume``, ...)."""
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        await send_bytes(self.stream, data, self.timeout)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message; PeerGone on close, PeerTimeout after ``timeout``."""
        limit = self.timeout if timeout is None else timeout
        try:
            with trio.fail_after(max(limit, 0.0)):
                while True:
                    event = self.machine.next_event()
                    if event is NEED_DATA:
                        # our own deadline governs, not the stream's default read timeout
                        self.machine.receive_data(await self._read(limit + 1.0))
                        continue
                    if event is CLOSED:
                        raise PeerGone("peer closed the stream")
                    assert isinstance(event, Message)
                    return event
        except trio.TooSlowError as exc:
            raise PeerTimeout(f"no message within {limit:g}s") from exc

    async def _read(self, timeout: float) -> bytes:
        return await receive_bytes(self.stream, timeout)

    async def close(self) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self.stream.close()
            except (StreamError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # closing a broken stream: nothing left to do but note it
                log.debug("closing task stream failed: %s", exc)


__all__ = [
    "PeerGone", "PeerTimeout", "ProtocolError", "TaskChannel", "TaskWireError", "receive_bytes", "send_bytes",
    "single_error",
]
