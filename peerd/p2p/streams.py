"""Streams with a timeout on every operation, and stream handlers that cannot kill the host.

``Stream`` wraps a libp2p stream (guards 4 and 5 in docs/py-libp2p.md): every read and
write runs under ``trio.fail_after``; as an async context manager it closes the
stream on a clean exit and resets it (shielded) on an error or cancellation, so
no stream leaks (after 256 leaked streams a connection's ``new_stream`` hangs).

``guard_handler`` wraps an application handler for ``host.set_stream_handler``
(guard 3: an exception escaping any stream handler kills the whole host): it
catches and logs the exception at the edge of the per-stream task and resets
the stream.

libp2p exceptions are translated here into ``StreamError`` / ``StreamTimeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerstore import PeerStoreError

from peerd.p2p.errors import StreamError, StreamTimeout

log = logging.getLogger(__name__)

DEFAULT_READ_SIZE = 64 << 10
RESET_TIMEOUT = 2.0
# Errors a stream operation may raise besides our own; translated to StreamError.
# PeerStoreError is a KeyError, not a BaseLibp2pError: the peerstore raises it for a peer it never saw.
FOREIGN_ERRORS = (BaseLibp2pError, PeerStoreError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def is_relayed_conn(conn: object) -> bool:
    """A swarm or muxed connection that runs through a relay (its transport address is a circuit)."""
    get_addrs = getattr(conn, "get_transport_addresses", None)
    try:
        addrs = get_addrs() if callable(get_addrs) else []
    except Exception:  # the library's connections raise assorted types once closed
        log.debug("no transport addresses on a closed connection", exc_info=True)
        return False
    return any("/p2p-circuit" in str(a) for a in addrs or [])


def short(peer_id: str) -> str:
    return peer_id[-8:]


class Stream:
    """A libp2p stream: bytes in, bytes out, each operation under a timeout."""

    def __init__(self, raw: INetStream, *, io_timeout: float) -> None:
        self._raw = raw
        self.io_timeout = io_timeout
        self.remote_peer: str = str(raw.muxed_conn.peer_id)
        self.protocol: str = str(raw.get_protocol() or "")
        self._finished = False

    def remote_address(self) -> tuple[str, int] | None:
        """The (ip, port) the other side's connection comes from (a relay's, when relayed)."""
        try:
            addr = self._raw.get_remote_address()
        except FOREIGN_ERRORS:
            return None
        return (str(addr[0]), int(addr[1])) if addr else None

    @property
    def relayed(self) -> bool:
        """True when the stream runs over a connection through a relay."""
        return is_relayed_conn(self._raw.muxed_conn)

    @property
    def finished(self) -> bool:
        """True once the stream was closed or reset through this wrapper."""
        return self._finished

    async def read(self, max_bytes: int = DEFAULT_READ_SIZE, *, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer closed its side.

        Raises StreamTimeout when nothing arrives within ``timeout`` (default
        ``io_timeout``), StreamError when the stream was reset or broke.
        """
        limit = self.io_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                return await self._raw.read(max_bytes)
        except StreamEOF:
            return b""
        except trio.TooSlowError as exc:
            raise StreamTimeout(f"no data from peer …{short(self.remote_peer)} in {limit:g}s") from exc
        except FOREIGN_ERRORS as exc:
            raise StreamError(f"read from peer …{short(self.remote_peer)} failed: {exc!r}") from exc

    async def read_exactly(self, size: int, *, timeout: float | None = None) -> bytes:
        """Exactly ``size`` bytes; StreamError if the stream ends first."""
        buf = bytearray()
        while len(buf) < size:
            chunk = await self.read(size - len(buf), timeout=timeout)
            if not chunk:
                raise StreamError(f"stream ended after {len(buf)} of {size} bytes")
            buf += chunk
        return bytes(buf)

    async def write(self, data: bytes, *, timeout: float | None = None) -> None:
        limit = self.io_timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                await self._raw.write(data)
        except trio.TooSlowError as exc:
            raise StreamTimeout(f"write to peer …{short(self.remote_peer)} took over {limit:g}s") from exc
        except FOREIGN_ERRORS as exc:
            raise StreamError(f"write to peer …{short(self.remote_peer)} failed: {exc!r}") from exc

    async def close_write(self) -> None:
        """Half-close: the peer reads EOF; we may still read its answer."""
        try:
            with trio.fail_after(self.io_timeout):
                # NetStream has close_write; 0.8.1's INetStream interface does not declare it
                await self._raw.close_write()  # type: ignore[attr-defined]
        except trio.TooSlowError as exc:
            raise StreamTimeout(f"closing stream to …{short(self.remote_peer)} timed out") from exc
        except FOREIGN_ERRORS as exc:
            raise StreamError(f"closing stream to …{short(self.remote_peer)} failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close gracefully (resets instead if that fails or is too slow)."""
        if self._finished:
            return
        try:
            with trio.fail_after(self.io_timeout):
                await self._raw.close()
            self._finished = True
        except (trio.TooSlowError, *FOREIGN_ERRORS) as exc:
            log.debug("closing stream to …%s failed (%r); resetting", short(self.remote_peer), exc)
            await self.reset()

    async def reset(self) -> None:
        """Abort the stream; shielded and bounded, never raises."""
        if self._finished:
            return
        self._finished = True
        with trio.CancelScope(shield=True), trio.move_on_after(RESET_TIMEOUT):
            try:
                await self._raw.reset()
            except FOREIGN_ERRORS as exc:
                log.debug("reset of stream to …%s failed: %r", short(self.remote_peer), exc)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            with trio.CancelScope(shield=True):
                await self.close()
        else:
            await self.reset()


async def reset_raw(raw: INetStream) -> None:
    """Reset a bare libp2p stream; shielded and bounded, never raises."""
    with trio.CancelScope(shield=True), trio.move_on_after(RESET_TIMEOUT):
        try:
            await raw.reset()
        except FOREIGN_ERRORS as exc:
            log.debug("reset of a bare stream failed: %r", exc)


StreamHandler = Callable[[Stream], Awaitable[None]]
RawHandler = Callable[[INetStream], Awaitable[None]]


def guard_handler(
    handler: StreamHandler,
    *,
    io_timeout: float,
    on_error: Callable[[], None] | None = None,
) -> RawHandler:
    """A libp2p stream handler that never lets an exception reach the host."""

    async def guarded(raw: INetStream) -> None:
        try:
            stream = Stream(raw, io_timeout=io_timeout)
        except Exception:  # edge of the per-stream task: a stream without a peer
            log.exception("inbound stream could not be wrapped; resetting it")
            await reset_raw(raw)
            return
        try:
            async with stream:
                await handler(stream)
        except Exception as exc:  # edge of the per-stream task: log, reset (done above)
            if on_error is not None:
                on_error()
            level = logging.INFO if isinstance(exc, StreamError) else logging.WARNING
            log.log(
                level,
                "handler for %s from peer …%s failed: %r",
                stream.protocol,
                short(stream.remote_peer),
                exc,
                exc_info=level >= logging.WARNING,
            )

    return guarded
