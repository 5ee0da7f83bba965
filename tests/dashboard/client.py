"""A tiny HTTP client over real trio sockets, to send what a browser would (and what it would not)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import h11
import trio


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def request(port: int, target: str, *, method: str = "GET", host: str | None = None,
                  raw: bytes | None = None) -> Answer:
    """One request; the whole answer (the server closes every connection after one)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        host_header = host if host is not None else f"127.0.0.1:{port}"
        await stream.send_all(raw if raw is not None else
                              f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode())
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target=target, headers=[("Host", host_header)]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:  # closed before a whole answer
                return Answer(status, headers, body)
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Answer(status, headers, body)


class EventStream:
    """A server-sent event stream read by hand: ``next()`` gives (event, data) pairs."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    @classmethod
    async def open(cls, port: int, target: str) -> EventStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(method="GET", target=target,
                                                    headers=[("Host", f"localhost:{port}")])))
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        events = cls(stream, conn)
        while not events.status:
            await events._feed()
        return events

    async def _feed(self) -> None:
        event = self.conn.next_event()
        if event is h11.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            self.status = event.status_code
            self.headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            self.buffer += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            self.ended = True

    async def next(self) -> tuple[str, str] | None:
        """The next event (comments and ``retry`` skipped); None once the stream ended."""
        while True:
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                              if ": " in line and not line.startswith(":"))
                if "event" in fields:
                    return fields["event"], fields.get("data", "")
            if self.ended:
                return None
            await self._feed()

    async def until(self, name: str) -> object:
        """The data (JSON) of the next event called ``name``."""
        while True:
            got = await self.next()
            assert got is not None, f"the stream ended before a {name!r} event"
            if got[0] == name:
                return json.loads(got[1])

    async def aclose(self) -> None:
        await self.stream.aclose()
