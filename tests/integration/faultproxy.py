"""A TCP proxy that injects faults, for tests (trio).

``FaultProxy`` accepts connections on a listening socket and forwards each to
a target: a fixed ``(host, port)``, or — ``target=None``, a *transparent*
proxy behind the NAT rules of ``netns.TestNetwork.intercept`` — the
connection's original destination (SO_ORIGINAL_DST). Upstream sockets come
from ``new_socket`` (e.g. ``host.socket(mark=PROXY_MARK)`` to dial from inside
a namespace, past the NAT rules). Faults apply at once, to live connections
too, and can be changed from any thread (plain attribute writes) except
``reset_all``, which must run on the proxy's trio loop:

    delay       seconds added to every chunk, in each direction (order kept)
    blackhole   data in either direction is swallowed; new connections are
                accepted and never forwarded (the peer sees a silent host)
    refuse      new connections are reset at once
    reset_all() every live connection is aborted with a TCP RST

``counters`` says what happened (accepted, forwarded, refused, blackholed,
reset, dial_failed, bytes). ``ProxyThread`` runs proxies on a trio loop in a
background thread for synchronous tests and scripts.

There is no netem on this kernel; this is how tests get latency and drops.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import trio

CHUNK = 64 << 10
QUEUE = 4096  # chunks in flight per direction (delay keeps them queued)
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
DIAL_TIMEOUT = 10.0
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

Address = tuple[str, int]


@dataclass
class Faults:
    delay: float = 0.0
    blackhole: bool = False
    refuse: bool = False


def original_destination(sock: socket.socket) -> Address:
    """Where a NAT-redirected connection was going (IPv4)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(packed), port


def listen_socket(address: Address, make: Callable[[], socket.socket] = socket.socket) -> socket.socket:
    sock = make()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    return sock


@dataclass(eq=False)
class _Link:
    """One proxied connection: both sockets and the scope that runs its pumps."""

    client: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    upstream: trio.SocketStream | None = None
    reset: bool = False

    def abort(self) -> None:
        """Arm an RST on close and stop the pumps."""
        self.reset = True
        for stream in (self.client, self.upstream):
            if stream is not None:
                with suppress(OSError):
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


class FaultProxy:
    def __init__(
        self,
        listener: socket.socket,
        *,
        target: Address | None = None,
        new_socket: Callable[[], socket.socket] = socket.socket,
    ) -> None:
        self._listener = listener
        self.target = target
        self._new_socket = new_socket
        self.faults = Faults()
        self.address: Address = listener.getsockname()[:2]
        self._links: set[_Link] = set()
        self.counters: dict[str, int] = {
            "accepted": 0, "forwarded": 0, "refused": 0, "blackholed": 0,
            "reset": 0, "dial_failed": 0, "bytes": 0,
        }

    # ------------------------------------------------------------ controls
    def set_delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    def set_blackhole(self, on: bool = True) -> None:
        self.faults.blackhole = on

    def set_refuse(self, on: bool = True) -> None:
        self.faults.refuse = on

    def heal(self) -> None:
        self.faults = Faults()

    def reset_all(self) -> int:
        """Abort every live connection with an RST; how many. Call on the proxy's loop."""
        links = list(self._links)
        for link in links:
            link.abort()
        self.counters["reset"] += len(links)
        return len(links)

    @property
    def live(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------ serving
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._listener))
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                client = await listener.accept()
                nursery.start_soon(self._serve, client)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.counters["accepted"] += 1
        link = _Link(client)
        self._links.add(link)
        try:
            with link.scope:
                if self.faults.refuse:
                    self.counters["refused"] += 1
                    link.abort()
                elif self.faults.blackhole:
                    self.counters["blackholed"] += 1
                    await self._swallow(client)
                else:
                    await self._forward(link)
        finally:
            self._links.discard(link)
            for stream in (link.upstream, client):
                if stream is not None:
                    with suppress(*_STREAM_ERRORS):
                        stream.socket.close()

    async def _swallow(self, client: trio.SocketStream) -> None:
        with suppress(*_STREAM_ERRORS):
            while await client.receive_some(CHUNK):
                pass

    async def _forward(self, link: _Link) -> None:
        try:
            target = self.target or original_destination(link.client.socket)  # type: ignore[arg-type]
            if target == self.address:
                raise OSError("the proxy would dial itself")
            link.upstream = await self._dial(target)
        except (OSError, trio.TooSlowError):
            self.counters["dial_failed"] += 1
            link.abort()
            return
        self.counters["forwarded"] += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, link.client, link.upstream, link)
            nursery.start_soon(self._pump, link.upstream, link.client, link)

    async def _dial(self, target: Address) -> trio.SocketStream:
        sock = trio.socket.from_stdlib_socket(self._new_socket())
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, link: _Link) -> None:
        """src → dst, each chunk held ``delay`` seconds; an error ends the whole link."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, receive, dst, link)
            async with send:
                try:
                    while data := await src.receive_some(CHUNK):
                        if not self.faults.blackhole:
                            await send.send((trio.current_time() + self.faults.delay, data))
                except _STREAM_ERRORS:
                    link.scope.cancel()

    async def _deliver(
        self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], dst: trio.SocketStream, link: _Link
    ) -> None:
        try:
            async with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await dst.send_all(data)
                    self.counters["bytes"] += len(data)
            await dst.send_eof()  # half-close: the other direction may still run
        except _STREAM_ERRORS:
            link.scope.cancel()


class ProxyThread:
    """A trio loop in a daemon thread that runs FaultProxies for synchronous code.

        with ProxyThread() as loop:
            proxy = loop.start(FaultProxy(sock, target=None, new_socket=...))
            proxy.set_delay(0.2)           # plain attribute: any thread
            loop.call(proxy.reset_all)     # touches the loop: through call()
    """

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="faultproxy", daemon=True)

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nursery is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self._token, self._nursery = trio.lowlevel.current_trio_token(), nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the owning thread in __exit__
            self._error = exc
        finally:
            self._ready.set()

    def start(self, proxy: FaultProxy) -> FaultProxy:
        assert self._nursery is not None, "use ProxyThread as a context manager"
        trio.from_thread.run(self._nursery.start, proxy.run, trio_token=self._token)
        return proxy

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the proxies' loop and return its result."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)
