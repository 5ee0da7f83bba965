"""Serving HTTP/1.1 on a loopback address: trio sockets and h11, shared by the metrics endpoint and the dashboard.

``open_listeners`` binds (its failure is the owner's error type, naming the config key), ``serve_connections``
hands each connection, under a connection limit, to the owner's handler and keeps whatever goes wrong in one
connection to that connection (logged). ``read_request`` reads one request head; ``Sender`` writes responses,
each closing its connection. Which addresses are allowed is the owner's (``metrics.listen_address``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import h11
import trio

from peerd.errors import PeerdError

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8 << 10
PLAIN_TEXT = "text/plain; charset=utf-8"

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def open_listeners(
    address: tuple[str, int], key: str, error: type[PeerdError]
) -> tuple[list[trio.SocketListener], int]:
    """Listen on ``address``; the listeners and the bound port. ``error`` (naming ``key``) if that fails."""
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise error(f"{key} {host}:{port}: cannot listen: {exc.strerror or exc}") from exc
    return listeners, int(listeners[0].socket.getsockname()[1])


async def serve_connections(
    listeners: list[trio.SocketListener], handler: Handler, *, name: str, url: str, max_connections: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status`` gets the bound port once connections are accepted."""
    limiter = trio.CapacityLimiter(max_connections)

    async def edge(stream: trio.SocketStream) -> None:
        """The edge of one client connection: whatever happens stays here."""
        try:
            async with stream, limiter:
                await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("%s client went away: %r", name, exc)
        except Exception:  # a bug in one request must not stop the server
            log.exception("%s request failed", name)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, edge, listeners)
        log.info("%s on %s", name, url)
        task_status.started(int(listeners[0].socket.getsockname()[1]))


def http_url(host: str, port: int, path: str) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}{path}"


def new_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)


async def read_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The request's head; None if malformed, oversize or cut short (its body, if any, is not read)."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(data)
            if not data:
                continue  # h11 reports the cut as ConnectionClosed or an error next
        else:
            return None


class Sender:
    """h11 responses on one stream; each carries ``headers`` and closes the connection."""

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self.conn = conn
        self.stream = stream
        self.headers = tuple(headers)

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def head(self, status: str, content_type: str, length: int | None = None) -> None:
        code, _, reason = status.partition(" ")
        headers = [("Content-Type", content_type), ("Connection", "close"), *self.headers]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        if code == "405":
            headers.append(("Allow", "GET, HEAD"))
        await self._send(h11.Response(status_code=int(code), reason=reason.encode(), headers=headers))

    async def data(self, body: bytes) -> None:
        await self._send(h11.Data(data=body))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def whole(self, status: str, content_type: str, body: bytes, length: int | None = None) -> None:
        """One whole response; ``length`` stands for the body's where a HEAD request leaves it out."""
        await self.head(status, content_type, len(body) if length is None else length)
        if body:
            await self.data(body)
        await self.end()

    async def bad_request(self) -> None:
        """400 for a request that could not be read; nothing if the client is gone already."""
        try:
            await self.whole("400 Bad Request", PLAIN_TEXT, b"bad request\n")
        except h11.LocalProtocolError:
            pass  # the client is gone (h11 has nothing to answer)


__all__ = ["MAX_REQUEST_HEAD", "PLAIN_TEXT", "Sender", "http_url", "new_connection", "open_listeners",
           "read_request", "serve_connections"]
