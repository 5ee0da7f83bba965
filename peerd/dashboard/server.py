"""The dashboard's HTTP server: trio sockets, h11 for HTTP/1.1, one plan per connection.

Every answer comes from ``NodeOps`` (the control socket's operations): JSON for
``/api/*``, server-sent events for ``/api/events`` (the node's views, each sent
when it changed, at most once per ``interval``) and ``/api/tasks/<id>/logs``
(log chunks as they come, coalesced). A connection serves one request and
closes; streams end when the client goes away or the server is cancelled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import trio

from peerd.control.ops import LogChunkView, NodeOps, OpError, TaskNotFound
from peerd.daemon.httpserve import Sender, http_url, new_connection, open_listeners, read_request, serve_connections
from peerd.dashboard.routing import SECURITY_HEADERS, STATIC, Kind, Plan, allowed_hosts, plan
from peerd.errors import PeerdError

REQUEST_TIMEOUT = 10.0  # to read a request and send a plain answer; streams are not bound by it
MAX_CONNECTIONS = 32
MAX_STREAMS = 16  # server-sent event streams open at once; more are answered 503
SNAPSHOT_INTERVAL = 2.0  # seconds between looks at the node's views for /api/events
HEARTBEAT = 15.0  # an SSE comment when nothing else was sent for this long (finds closed clients)
SNAPSHOT_TASKS = 50
SNAPSHOT_RECEIPTS = 1000
MAX_LOG_EVENT = 64 << 10  # bytes of log text merged into one event
RETRY_MS = 2000


class DashboardError(PeerdError):
    """The dashboard cannot be served."""


def to_json(value: object) -> bytes:
    """A view as compact JSON; bytes (log data) as UTF-8 text with invalid bytes replaced."""

    def text(obj: object) -> str:
        if isinstance(obj, bytes | bytearray):
            return bytes(obj).decode("utf-8", "replace")
        raise TypeError(f"not JSON-able: {type(obj).__name__}")

    return json.dumps(value, default=text, separators=(",", ":"), allow_nan=False).encode()


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event; ``data`` is one line of JSON (json.dumps escapes newlines)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def _without_cosigned(receipts: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "cosigned"} for r in receipts]


class DashboardServer:
    """Serves the dashboard on one loopback address until cancelled."""

    def __init__(self, ops: NodeOps, address: tuple[str, int], *, interval: float = SNAPSHOT_INTERVAL,
                 heartbeat: float = HEARTBEAT) -> None:
        self.ops = ops
        self.address = address
        self.port: int | None = None
        self.interval = interval
        self.heartbeat = heartbeat
        self._hosts: frozenset[str] = frozenset()
        self._streams = 0
        folder = resources.files(__package__).joinpath("static")
        self._files = {name: folder.joinpath(name).read_bytes() for name, _ in STATIC.values()}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound port, serve until cancelled."""
        listeners, self.port = await open_listeners(self.address, "dashboard.listen", DashboardError)
        self._hosts = allowed_hosts(self.address[0], self.port)
        await serve_connections(listeners, self._serve, name="dashboard", max_connections=MAX_CONNECTIONS,
                                url=http_url(self.address[0], self.port, "/"), task_status=task_status)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = new_connection()
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            request = await read_request(conn, stream)
        if scope.cancelled_caught:
            return
        send = Sender(conn, stream, SECURITY_HEADERS)
        if request is None:
            await send.bad_request()
            return
        host = next((v.decode("latin-1") for k, v in request.headers if k == b"host"), None)
        the_plan = plan(request.method.decode("latin-1"), request.target.decode("latin-1"), host, self._hosts)
        head_only = request.method == b"HEAD"
        if the_plan.streams and not head_only:
            await self._stream(the_plan, send)
            return
        with trio.move_on_after(REQUEST_TIMEOUT):
            status, content_type, body = await self._answer(the_plan)
            await send.whole(status, content_type, b"" if head_only else body, len(body))

    # ------------------------------------------------------------ plain answers
    async def _answer(self, p: Plan) -> tuple[str, str, bytes]:
        """(status line, content type, body) for a plan that is not a stream."""
        if p.kind is Kind.STATIC:
            return "200 OK", p.content_type, self._files[p.name]
        if p.kind is Kind.REFUSED:
            return p.name, "text/plain; charset=utf-8", p.reason.encode()
        if p.streams:  # HEAD of a stream: its headers, no body
            return "200 OK", "text/event-stream", b""
        try:
            return "200 OK", "application/json", to_json(await self._view(p))
        except TaskNotFound as exc:
            return "404 Not Found", "application/json", to_json({"error": str(exc)})
        except OpError as exc:
            return "400 Bad Request", "application/json", to_json({"error": str(exc), "code": exc.code})
        except PeerdError as exc:
            return "503 Service Unavailable", "application/json", to_json({"error": str(exc)})

    async def _view(self, p: Plan) -> object:
        if p.kind is Kind.STATUS:
            return await self.ops.status()
        if p.kind is Kind.PEERS:
            return await self.ops.peers()
        if p.kind is Kind.TASKS:
            return await self.ops.tasks(p.limit)
        if p.kind is Kind.RECEIPTS:
            return await self.ops.receipts(p.limit)
        view = await self.ops.task(p.task_id)
        if view is None:
            raise TaskNotFound(p.task_id)
        return view

    # ------------------------------------------------------------ streams
    async def _stream(self, p: Plan, send: Sender) -> None:
        if self._streams >= MAX_STREAMS:
            await send.whole("503 Service Unavailable", "text/plain; charset=utf-8", b"too many streams\n")
            return
        if p.kind is Kind.LOGS:
            status, content_type, body = await self._answer(Plan(Kind.TASK, task_id=p.task_id))
            if not status.startswith("200"):
                await send.whole(status, content_type, body, len(body))
                return
        self._streams += 1
        try:
            await send.head("200 OK", "text/event-stream; charset=utf-8")
            await send.data(f"retry: {RETRY_MS}\n\n".encode())
            if p.kind is Kind.SNAPSHOTS:
                await self._snapshots(send)
            else:
                await self._logs(p.task_id, send)
        finally:
            self._streams -= 1

    async def _snapshots(self, send: Sender) -> None:
        """Each view as an event when it changed since the last look; a comment now and then. Each view
        goes out as soon as it is read (status first), so the node view paints before a long task list."""
        sent: dict[str, bytes] = {}
        quiet = 0.0
        while True:
            changed = False
            for name, read in self._views():
                body = to_json(await read())
                if sent.get(name) != body:
                    await send.data(sse(name, body))
                    sent[name] = body
                    changed = True
            if changed:
                quiet = 0.0
            elif quiet >= self.heartbeat:
                await send.data(b": ping\n\n")
                quiet = 0.0
            await trio.sleep(self.interval)  # the stream's rate bound, not a wait for a condition
            quiet += self.interval

    def _views(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        async def receipts() -> object:
            return _without_cosigned([dict(r) for r in await self.ops.receipts(SNAPSHOT_RECEIPTS)])

        async def tasks() -> object:
            return await self.ops.tasks(SNAPSHOT_TASKS)

        return [("status", self.ops.status), ("peers", self.ops.peers), ("tasks", tasks), ("receipts", receipts)]

    async def _logs(self, task_id: str, send: Sender) -> None:
        """Log chunks as events (``chunk``: {stream, text}), consecutive ones merged; ``end`` at the end."""
        out, into = trio.open_memory_channel[LogChunkView | None](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, lambda: self.ops.logs(task_id, True), out)
            while True:
                with trio.move_on_after(self.heartbeat):
                    first = await into.receive()
                    batch = [first] if first is not None else []
                    while first is not None and sum(len(c["data"]) for c in batch) < MAX_LOG_EVENT:
                        try:
                            first = into.receive_nowait()
                        except trio.WouldBlock:
                            break
                        if first is not None:
                            batch.append(first)
                    if batch:
                        await send.data(b"".join(sse("chunk", to_json(c)) for c in _merged(batch)))
                    if first is None:
                        await send.data(sse("end", b"{}"))
                        await send.end()
                        return
                    continue
                await send.data(b": ping\n\n")


def _merged(chunks: list[LogChunkView]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for chunk in chunks:
        text = chunk["data"].decode("utf-8", "replace")
        if out and out[-1]["stream"] == chunk["stream"]:
            out[-1]["text"] += text
        else:
            out.append({"stream": chunk["stream"], "text": text})
    return out


async def _pump(open_logs: Callable[[], AsyncIterator[LogChunkView]],
                out: trio.MemorySendChannel[LogChunkView | None]) -> None:
    """Feed a task's log chunks into ``out``, then None (the end, or an error already said as a chunk)."""
    items = open_logs()
    try:
        async for chunk in items:
            await out.send(chunk)
    except PeerdError as exc:
        await out.send(LogChunkView(stream="stderr", data=f"[dashboard: logs ended: {exc}]\n".encode()))
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
    await out.send(None)
