"""The fault-injection harness itself: the proxy's faults and the namespaces' isolation.

The proxy runs in-process on 127.0.0.1 in front of an echo server; the
namespace tests build a real test network (root only, as CI runs).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from peerd.devnet import wait_for
from tests.integration.faultproxy import FaultProxy, ProxyThread, listen_socket
from tests.integration.netns import SUBNET, TestNetwork, netns_names, transparent_proxy

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", 0)


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(1 << 16):
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def proxied_echo() -> AsyncIterator[tuple[FaultProxy, list[int]]]:
    """An echo server behind a FaultProxy; the list counts connections the server got."""
    served: list[int] = []

    async def counting_echo(stream: trio.SocketStream) -> None:
        served.append(1)
        await echo(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, counting_echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        proxy = FaultProxy(listen_socket(LOOPBACK), target=("127.0.0.1", port))
        await nursery.start(proxy.run)
        yield proxy, served
        nursery.cancel_scope.cancel()


async def connect(proxy: FaultProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream(*proxy.address)


async def round_trip(stream: trio.SocketStream, data: bytes = b"ping") -> float:
    start = time.monotonic()
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some(1 << 16)
        assert chunk, "closed before the echo came back"
        got += chunk
    assert got == data
    return time.monotonic() - start


# ---------------------------------------------------------------- the proxy
async def test_proxy_forwards_both_ways_and_passes_half_close_on() -> None:
    async with proxied_echo() as (proxy, served):
        stream = await connect(proxy)
        assert await round_trip(stream, b"x" * 200_000) < 5
        await stream.send_eof()
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""  # the server saw EOF and closed its side
        assert served == [1] and proxy.counters["forwarded"] == 1
        assert proxy.counters["bytes"] == 2 * 200_000


async def test_proxy_delays_each_direction() -> None:
    async with proxied_echo() as (proxy, _):
        stream = await connect(proxy)
        fast = await round_trip(stream)
        proxy.set_delay(0.2)
        slow = await round_trip(stream)  # a live connection is slowed at once
        assert fast < 0.4 <= slow < 1.5, (fast, slow)  # 0.4 s: 200 ms there and 200 ms back
        proxy.heal()
        assert await round_trip(stream) < 0.4


async def test_proxy_resets_live_connections() -> None:
    async with proxied_echo() as (proxy, _):
        stream = await connect(proxy)
        await round_trip(stream)
        assert proxy.reset_all() == 1
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.receive_some(10)  # ECONNRESET, not a clean EOF
        assert proxy.live == 0


async def test_proxy_refuses_new_connections_with_a_reset_until_healed() -> None:
    async with proxied_echo() as (proxy, served):
        proxy.set_refuse()
        stream = await connect(proxy)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.receive_some(10)
        assert served == [] and proxy.counters["refused"] == 1
        proxy.heal()
        assert await round_trip(await connect(proxy)) < 1


async def test_proxy_blackhole_accepts_and_never_forwards() -> None:
    async with proxied_echo() as (proxy, served):
        live = await connect(proxy)
        await round_trip(live)
        proxy.set_blackhole()
        fresh = await connect(proxy)  # the TCP handshake succeeds…
        for stream in (live, fresh):
            await stream.send_all(b"anyone there?")
            with trio.move_on_after(0.5) as silent:  # …and nothing ever comes back
                await stream.receive_some(10)
            assert silent.cancelled_caught
        assert served == [1] and proxy.counters["blackholed"] == 1


def test_proxy_thread_runs_proxies_for_synchronous_code() -> None:
    with socket.create_server(LOOPBACK) as server, ProxyThread() as loop:
        proxy = loop.start(FaultProxy(listen_socket(LOOPBACK), target=server.getsockname()))
        with socket.create_connection(proxy.address, timeout=5) as client:
            upstream, _ = server.accept()
            client.sendall(b"hi")
            assert upstream.recv(2) == b"hi"
            assert loop.call(proxy.reset_all) == 1
            upstream.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while upstream.recv(10):
                    pass
            upstream.close()


# ---------------------------------------------------------------- the namespaces
def reachable(net: TestNetwork, src: str, dst: str) -> bool:
    return observed_source(net, src, dst) is not None


def test_hosts_reach_each_other_only_on_the_private_range() -> None:
    with TestNetwork() as net:
        for name in ("a", "b", "c"):
            net.add_host(name)
        assert reachable(net, "a", "b") and reachable(net, "b", "c")
        for host in net.hosts.values():
            assert host.addr.startswith(SUBNET + ".")
            routes = host.run("ip", "-4", "route", "show").stdout
            assert "default" not in routes, routes  # no way out of the test network
        # nothing was added to this machine's own namespace
        assert SUBNET not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout


def test_partition_and_cut_drop_traffic_until_healed() -> None:
    with TestNetwork() as net:
        for name in ("a", "b", "c"):
            net.add_host(name)
        net.partition(["a"], ["b"])
        assert not reachable(net, "a", "b") and not reachable(net, "b", "a")
        assert reachable(net, "a", "c") and reachable(net, "c", "b")
        net.heal()
        assert reachable(net, "a", "b")
        net.cut("c")
        assert not reachable(net, "a", "c") and not reachable(net, "c", "b")
        net.restore("c")
        assert reachable(net, "a", "c")


def observed_source(net: TestNetwork, src: str, dst: str) -> str | None:
    """The source address ``dst`` sees on a connection from ``src`` (None: no connection)."""
    target = net.hosts[dst]
    with target.socket() as server, net.hosts[src].socket() as client:
        server.bind((target.addr, 0))
        server.listen()
        client.settimeout(0.5)
        try:
            client.connect(server.getsockname())
        except OSError:
            return None
        conn, (peer, _) = server.accept()
        conn.close()
        return str(peer)


def test_hosts_behind_a_router_reach_out_but_nobody_reaches_in() -> None:
    with TestNetwork() as net:
        net.add_host("public")
        home, office = net.add_router("home"), net.add_router("office")
        net.add_host("laptop", behind="home")
        net.add_host("desktop", behind="office")
        assert net.hosts["laptop"].addr.startswith(home.lan_prefix + ".")
        # out through the router: the public side sees the router's address (MASQUERADE)
        assert observed_source(net, "laptop", "public") == home.host.addr
        assert observed_source(net, "desktop", "public") == office.host.addr
        # in: nobody outside opens a connection to a host behind a router, not even another NAT'd one
        assert observed_source(net, "public", "laptop") is None
        assert observed_source(net, "desktop", "laptop") is None
        assert observed_source(net, "laptop", "desktop") is None
        net.cut("laptop")
        assert observed_source(net, "laptop", "public") is None
        net.restore("laptop")  # the gateway's failed neighbour entry takes one retry to clear
        wait_for("the laptop to be back online", lambda: observed_source(net, "laptop", "public") == home.host.addr, 5)


def test_intercept_sends_both_directions_through_the_transparent_proxy() -> None:
    with TestNetwork() as net, ProxyThread() as loop:
        a, b = net.add_host("a"), net.add_host("b")
        net.intercept("a", 7777)
        proxy = loop.start(transparent_proxy(a, 7777))
        proxy.set_delay(0.1)
        for src, dst in (("a", "b"), ("b", "a")):
            target = net.hosts[dst]
            with target.socket() as server, net.hosts[src].socket() as client:
                server.bind((target.addr, 0))
                server.listen()
                client.settimeout(5)
                client.connect(server.getsockname())
                upstream, _ = server.accept()
                start = time.monotonic()
                client.sendall(b"x")
                assert upstream.recv(1) == b"x"
                assert time.monotonic() - start >= 0.1, f"{src}→{dst} bypassed the proxy"
                upstream.close()
        assert proxy.counters["forwarded"] == 2 and b.addr != a.addr


def test_close_kills_processes_and_removes_every_namespace() -> None:
    net = TestNetwork()
    host = net.add_host("a")
    sleeper = host.popen([sys.executable, "-c", "import time; time.sleep(600)"])
    names = {net.switch, host.netns}
    assert names <= netns_names()
    assert sleeper.pid in net.pids()
    net.close()
    assert sleeper.wait(10) != 0
    assert not names & netns_names()
