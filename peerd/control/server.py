"""``ControlServer``: the daemon's end of the control socket (trio).

Owns the socket file (created 0660 with its directory's group, refused in a
world-writable directory, a stale file from a dead daemon replaced, a live
daemon never displaced) and one task per client connection. A connection
feeds bytes to a ``protocol.control.ControlServerConnection`` in a reader task
and answers requests one at a time, in order: the protocol object checks the
hello, this module answers it and routes every other command through
``commands.COMMANDS``. A client idle longer than ``idle_timeout`` between
requests is closed, as is one that stops reading our answers for that long;
a client that hangs up cancels the request in progress (a ``wait`` or a
followed log). A malformed or oversize frame gets a ``malformed`` error and
the connection is closed. Nothing a client does can stop the server: each
connection ends at an edge that logs what went wrong.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import trio

from peerd import __version__
from peerd.control.commands import COMMANDS, ArgReader
from peerd.control.errors import SocketPathError
from peerd.control.ops import NodeOps, OpError
from peerd.control.wire import (
    FAILED,
    HELLO,
    INTERNAL,
    MAX_MESSAGE,
    REQUEST_MAX_FRAME,
    RESPONSE_MAX_FRAME,
    RESPONSE_TOO_LARGE,
    UNKNOWN_COMMAND,
    to_value,
)
from peerd.errors import PeerdError
from protocol.codec import encode, frame
from protocol.control import (
    CLOSED,
    ControlRefused,
    ControlServerConnection,
    fail,
    hello_ok,
    ok,
)
from protocol.messages import ControlRequest, ControlResponse
from protocol.schema import Value

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
READ_CHUNK = 64 << 10
PROBE_TIMEOUT = 2.0

Incoming = ControlRequest | ControlRefused


class ResponseTooLarge(OpError):
    code = RESPONSE_TOO_LARGE


class ControlServer:
    """Serves ``ops`` on a Unix stream socket at ``path``."""

    def __init__(
        self,
        path: Path,
        ops: NodeOps,
        *,
        idle_timeout: float = 60.0,
        max_request: int = REQUEST_MAX_FRAME,
    ) -> None:
        self.path = path
        self._ops = ops
        self._idle_timeout = idle_timeout
        self._max_request = max_request

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started()`` once clients can connect."""
        listener, inode = await open_listener(self.path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle_connection, [listener])
                log.info("control socket listening on %s", self.path)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            _remove_socket(self.path, inode)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        """The edge of a connection's task: whatever happens stays here."""
        conn = _Connection(stream, self._ops, self._idle_timeout, self._max_request)
        try:
            await conn.serve()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as group:
            log.debug("control client went away: %r", group.exceptions)
        except* Exception:  # a bug: log it, tell the client, keep the daemon
            log.exception("control connection failed")
            await conn.report_internal_error()
        finally:
            await stream.aclose()


class _Connection:
    """One client: a reader task feeding the in-order request loop."""

    def __init__(self, stream: trio.SocketStream, ops: NodeOps, idle: float, max_request: int) -> None:
        self._stream = stream
        self._ops = ops
        self._idle = idle
        self._protocol = ControlServerConnection(max_frame=max_request)
        self._gone = False
        self._request_scope: trio.CancelScope | None = None
        self._request_id = 0

    async def serve(self) -> None:
        send, receive = trio.open_memory_channel[Incoming](8)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_requests, send)
            await self._request_loop(receive)
            nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ reading
    async def _read_requests(self, send: trio.MemorySendChannel[Incoming]) -> None:
        """Pass requests on; stop at the first refusal (it is the last thing sent)."""
        async with send:
            while True:
                self._protocol.receive_data(await self._receive_some())
                try:
                    while isinstance(item := self._protocol.next_request(), ControlRequest):
                        await send.send(item)
                except ControlRefused as refused:
                    log.info("control client broke the protocol: %s", refused)
                    await send.send(refused)
                    return
                if item is CLOSED:
                    break
        self._hang_up()

    async def _receive_some(self) -> bytes:
        try:
            return await self._stream.receive_some(READ_CHUNK)
        except trio.BrokenResourceError:
            return b""

    def _hang_up(self) -> None:
        self._gone = True
        if self._request_scope is not None:
            self._request_scope.cancel()

    async def _next(self, receive: trio.MemoryReceiveChannel[Incoming]) -> Incoming | None:
        with trio.move_on_after(self._idle):
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                return None
        log.info("closing idle control client after %gs", self._idle)
        return None

    # ------------------------------------------------------------ requests
    async def _request_loop(self, receive: trio.MemoryReceiveChannel[Incoming]) -> None:
        while (item := await self._next(receive)) is not None and not self._gone:
            if isinstance(item, ControlRefused):
                await self._send(item.response)
                return
            self._request_id = item.id
            if item.command == HELLO:  # checked by the protocol object
                await self._send(hello_ok(item.id, __version__))
                continue
            with trio.CancelScope() as scope:
                self._request_scope = scope
                await self._respond(item)
            self._request_scope = None
            if scope.cancelled_caught:
                return

    async def _respond(self, request: ControlRequest) -> None:
        """Answer one request through the dispatch table."""
        command = COMMANDS.get(request.command)
        if command is None:
            await self._fail(request.id, UNKNOWN_COMMAND, f"unknown command {request.command!r}")
            return
        args = ArgReader(request.args)
        try:
            if command.call is not None:
                await self._send_result(request.id, command.call(self._ops, args))
            elif command.stream is not None:
                await self._send_stream(request.id, command.stream(self._ops, args))
        except OpError as exc:
            await self._fail(request.id, exc.code, str(exc))
        except PeerdError as exc:
            await self._fail(request.id, FAILED, str(exc))

    async def _send_result(self, request_id: int, result: Awaitable[object]) -> None:
        await self._send(ok(request_id, _wire(await result)))

    async def _send_stream(self, request_id: int, items: AsyncIterator[object]) -> None:
        try:
            async for item in items:
                await self._send(ok(request_id, _wire(item), more=True))
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._send(ok(request_id, None))

    async def _fail(self, request_id: int, code: str, message: str) -> None:
        await self._send(fail(request_id, code, message[:MAX_MESSAGE]))

    async def _send(self, response: ControlResponse) -> None:
        """Write a response; a client that stops reading for ``idle`` seconds is dropped."""
        payload = encode(response)
        if len(payload) > RESPONSE_MAX_FRAME:
            raise ResponseTooLarge(f"the response is {len(payload)} bytes, over {RESPONSE_MAX_FRAME}")
        with trio.fail_after(self._idle):
            await self._stream.send_all(frame(payload, RESPONSE_MAX_FRAME))

    async def report_internal_error(self) -> None:
        response = fail(self._request_id, INTERNAL, "internal daemon error; see the daemon log")
        try:
            with trio.move_on_after(1.0):
                await self._stream.send_all(frame(encode(response), RESPONSE_MAX_FRAME))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError) as exc:
            log.debug("could not report the internal error to the client: %r", exc)


def _wire(result: object) -> Value:
    try:
        return to_value(result)
    except TypeError as exc:
        raise TypeError(f"a node operation returned something that is not wire data: {exc}") from exc


# ---------------------------------------------------------------- the socket file
async def open_listener(path: Path) -> tuple[trio.SocketListener, int]:
    """Bind ``path`` (0660, its directory's group) and listen; return the inode too."""
    _check_directory(path.parent)
    await _clear_stale(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        # Connections are refused until listen(), so no client sees a wider mode.
        os.chmod(path, SOCKET_MODE)
        _share_group(path)
        sock.listen(128)
        inode = os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        raise SocketPathError(f"{path}: cannot listen on the control socket: {exc}") from exc
    return trio.SocketListener(sock), inode


def _check_directory(directory: Path) -> None:
    try:
        info = directory.stat()
    except OSError as exc:
        raise SocketPathError(f"{directory}: control socket directory unusable: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise SocketPathError(f"{directory}: not a directory")
    if info.st_mode & stat.S_IWOTH:
        raise SocketPathError(
            f"{directory}: refusing to put the control socket in a world-writable directory "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); set node.control_socket or fix the mode"
        )


async def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse if a daemon does."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketPathError(f"{path}: cannot inspect: {exc}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{path}: exists and is not a socket; not replacing it")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                await probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", path)
            path.unlink(missing_ok=True)
            return
        except (OSError, trio.TooSlowError) as exc:
            raise SocketPathError(f"{path}: cannot probe the existing socket: {exc!r}") from exc
    raise SocketPathError(f"{path}: another peerd daemon is listening on this control socket")


def _share_group(path: Path) -> None:
    """Give the socket its directory's group, so that group's members may connect."""
    gid = path.parent.stat().st_gid
    if os.lstat(path).st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError as exc:
        log.warning("control socket %s keeps its group; cannot set gid %d: %s", path, gid, exc)


def _remove_socket(path: Path, inode: int) -> None:
    """Unlink the socket file if it is still the one we bound."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove control socket %s: %s", path, exc)
