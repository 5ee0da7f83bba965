"""Streams and handlers between two real services on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import trio

from peerd.p2p.errors import DialError, StreamError, StreamTimeout
from peerd.p2p.streams import Stream
from tests.integration.harness_p2p import FAST_NET, Cluster, Node, p2p_cluster

ECHO = "/test/echo/1.0.0"
NET = dataclasses.replace(FAST_NET, io_timeout=1.0, connect_timeout=2.0)


async def echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Cluster, Node, Node]]:
    async with p2p_cluster(NET, with_seed=False) as cluster:
        a = await cluster.start_node(bootstrap=[])
        b = await cluster.start_node(bootstrap=[])
        a.service.set_stream_handler(ECHO, echo)
        yield cluster, a, b


async def test_open_stream_dials_and_round_trips(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair
    assert a.peer_id not in b.service.connected_peers()
    async with b.service.open_stream(a.peer_id, ECHO, a.service.listen_addrs()) as stream:
        assert stream.remote_peer == a.peer_id and stream.protocol == ECHO
        await stream.write(b"ping")
        assert await stream.read_exactly(4) == b"ping"
        await stream.close_write()
        assert await stream.read() == b""
    assert a.peer_id in b.service.connected_peers()


async def test_awaited_stream_and_handler_set_before_start() -> None:
    async with p2p_cluster(NET, with_seed=False) as cluster:
        a = await cluster.start_node(bootstrap=[])
        b = await cluster.start_node(bootstrap=[])
        a.service.set_stream_handler(ECHO, echo)
        stream = await b.service.open_stream(a.peer_id, ECHO, a.service.listen_addrs())
        await stream.write(b"x")
        assert await stream.read() == b"x"
        await stream.close()
        assert stream.finished


async def test_handler_exception_is_contained_and_the_host_lives_on(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair

    async def boom(stream: Stream) -> None:
        await stream.read()
        raise RuntimeError("handler bug")

    a.service.set_stream_handler("/test/boom/1.0.0", boom)
    async with b.service.open_stream(a.peer_id, "/test/boom/1.0.0", a.service.listen_addrs()) as stream:
        await stream.write(b"hi")
        with pytest.raises(StreamError):  # the stream was reset, not left hanging
            while await stream.read():
                pass
            raise StreamError("closed instead of reset")
    assert a.service.counters["handler_errors"] == 1
    async with b.service.open_stream(a.peer_id, ECHO) as stream:  # host still serves
        await stream.write(b"still here")
        assert await stream.read_exactly(10) == b"still here"


async def test_read_times_out_on_a_silent_peer(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair
    release = trio.Event()

    async def silent(stream: Stream) -> None:
        await release.wait()

    a.service.set_stream_handler("/test/silent/1.0.0", silent)
    async with b.service.open_stream(a.peer_id, "/test/silent/1.0.0", a.service.listen_addrs()) as stream:
        start = trio.current_time()
        with pytest.raises(StreamTimeout):
            await stream.read(timeout=0.3)
        assert 0.3 <= trio.current_time() - start < 1.5
        with pytest.raises(StreamTimeout):
            await stream.read()  # the default io_timeout (1 s) applies too
    release.set()


async def test_cancelled_stream_is_reset_so_the_peer_stops_waiting(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair
    seen: list[object] = []
    done = trio.Event()

    async def waits(stream: Stream) -> None:
        await stream.read()
        try:
            seen.append(await stream.read(timeout=10))  # b"" (reset reads as EOF) ...
        except StreamError as exc:
            seen.append(exc)  # ... or a StreamError, but never the 10 s timeout
        finally:
            done.set()

    a.service.set_stream_handler("/test/waits/1.0.0", waits)
    with trio.move_on_after(0.3) as scope:
        async with b.service.open_stream(a.peer_id, "/test/waits/1.0.0", a.service.listen_addrs()) as stream:
            await stream.write(b"x")
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with trio.fail_after(3):
        await done.wait()
    assert seen == [b""] or (len(seen) == 1 and type(seen[0]) is StreamError)
    # no stream of ours is left open on b's side (libp2p's own pubsub/identify remain)
    leftover = [s for s in _streams(b) if s.get_protocol() == "/test/waits/1.0.0"]
    assert leftover == []


def _streams(node: Node) -> list:  # type: ignore[type-arg]
    libp2p_node = node.service._node
    assert libp2p_node is not None
    conns = libp2p_node.host.get_network().connections.values()
    return [s for group in conns for c in group for s in c.get_streams()]


async def test_many_cancelled_streams_do_not_exhaust_the_connection(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair
    # 300 > the 256 leaked streams after which py-libp2p's new_stream hangs
    for _ in range(300):
        with trio.CancelScope() as scope:
            async with b.service.open_stream(a.peer_id, ECHO, a.service.listen_addrs()):
                scope.cancel()
                await trio.sleep_forever()
    assert not [s for s in _streams(b) if s.get_protocol() == ECHO]
    with trio.fail_after(5):
        async with b.service.open_stream(a.peer_id, ECHO) as stream:
            await stream.write(b"ok")
            assert await stream.read() == b"ok"


async def test_redial_after_a_failed_dial_is_not_blocked(pair: tuple[Cluster, Node, Node]) -> None:
    cluster, a, b = pair
    addrs = a.service.listen_addrs()
    fixed = addrs[0].split("/p2p/")[0]
    await a.stop()
    with pytest.raises(DialError):
        await b.service.open_stream(a.peer_id, ECHO, addrs)
    # the same key on the same port comes back; the swarm's 60 s negative cache must not bite
    back = await cluster.start_node(a.signer, bootstrap=[], listen=fixed)
    back.service.set_stream_handler(ECHO, echo)
    with trio.fail_after(5):
        async with b.service.open_stream(a.peer_id, ECHO, addrs) as stream:
            await stream.write(b"back")
            assert await stream.read_exactly(4) == b"back"


async def test_open_stream_to_an_unknown_protocol_fails_cleanly(pair: tuple[Cluster, Node, Node]) -> None:
    _, a, b = pair
    with pytest.raises(StreamError):
        await b.service.open_stream(a.peer_id, "/test/nobody/1.0.0", a.service.listen_addrs())
