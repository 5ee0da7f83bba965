"""The py-libp2p 0.8.1 guards, checked against real hosts on loopback."""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import subprocess
import sys
from functools import partial

import libp2p.network.swarm as swarm
import libp2p.security.noise.io as noise_io
import libp2p.stream_muxer.yamux.yamux as yamux
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from peerd.p2p import guards
from peerd.p2p.dialing import connect
from peerd.p2p.errors import DialError, PortInUse
from peerd.p2p.host import GOSSIP_PROTOCOLS, open_node
from protocol.signing import Signer
from tests.integration.harness_p2p import LOOPBACK, p2p_cluster


def test_pinned_library_version() -> None:
    # Every guard here was measured against this release; re-measure before moving.
    assert importlib.metadata.version("libp2p") == "0.8.1"


def test_upstream_still_ships_the_250ms_dial_delay() -> None:
    # A fresh interpreter sees the library's own default; if an upgrade changes it,
    # this fails and the guard in peerd/p2p/guards.py must be reviewed.
    out = subprocess.run(
        [sys.executable, "-c", "import libp2p.network.swarm as s; print(s._HAPPY_EYEBALLS_DELAY)"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert float(out.stdout.strip()) == guards.UPSTREAM_HAPPY_EYEBALLS_DELAY


async def _dial_seconds() -> float:
    async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as a, \
            open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as b:
        addr = f"{b.host.get_addrs()[0]}"
        start = trio.current_time()
        await connect(a, b.peer_id, [addr], timeout=5.0)
        return trio.current_time() - start


async def test_dial_delay_is_off_and_a_dial_takes_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    guards.apply_library_guards()
    assert swarm._HAPPY_EYEBALLS_DELAY == 0.0
    guarded = await _dial_seconds()
    # the same dial with a head start (the library ships 250 ms; 1 s here, so that load cannot blur it)
    monkeypatch.setattr(swarm, "_HAPPY_EYEBALLS_DELAY", 1.0)
    delayed = await _dial_seconds()
    assert delayed >= 1.0  # the library does wait for that attribute: the guard's target is the real one
    assert guarded < delayed - 0.9, (guarded, delayed)  # a 250 ms head start would fail this too


def test_dial_delay_guard_refuses_a_changed_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(swarm, "_HAPPY_EYEBALLS_DELAY")
    with pytest.raises(guards.LibraryChanged):
        guards.disable_dial_delay()


def test_upstream_still_ships_yamux_frames_one_byte_over_a_noise_message() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import libp2p.stream_muxer.yamux.yamux as y, libp2p.security.noise.io as n; "
                               "print(y.MAX_MESSAGE_SIZE, n.MAX_PLAINTEXT_LENGTH)"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert out.stdout.split() == [str(guards.UPSTREAM_YAMUX_MAX_MESSAGE_SIZE), "65519"]


async def _noise_messages_for_one_mib(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The plaintext sizes of the Noise messages either side encrypts while one stream carries 1 MiB."""
    sizes: list[int] = []
    encrypt = noise_io.NoiseTransportReadWriter.encrypt

    def counted(self: noise_io.NoiseTransportReadWriter, data: bytes) -> bytes:
        sizes.append(len(data))
        return encrypt(self, data)

    protocol = TProtocol("/test/bulk/1.0.0")
    done = trio.Event()

    async def sink(stream: object) -> None:
        got = 0
        while got < 1 << 20:
            got += len(await stream.read(1 << 20))  # type: ignore[attr-defined]
        done.set()

    async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as a, \
            open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as b:
        b.host.set_stream_handler(protocol, sink)  # type: ignore[arg-type]
        await connect(a, b.peer_id, [f"{b.host.get_addrs()[0]}"], timeout=5.0)
        stream = await a.host.new_stream(b.host.get_id(), [protocol])
        monkeypatch.setattr(noise_io.NoiseTransportReadWriter, "encrypt", counted)
        await stream.write(bytes(1 << 20))
        with trio.fail_after(10):
            await done.wait()
        monkeypatch.setattr(noise_io.NoiseTransportReadWriter, "encrypt", encrypt)
        await stream.reset()
    return sizes


async def test_a_yamux_frame_goes_out_as_one_noise_message(monkeypatch: pytest.MonkeyPatch) -> None:
    guards.apply_library_guards()
    assert yamux.MAX_MESSAGE_SIZE == noise_io.MAX_PLAINTEXT_LENGTH
    guarded = await _noise_messages_for_one_mib(monkeypatch)
    monkeypatch.setattr(yamux, "MAX_MESSAGE_SIZE", guards.UPSTREAM_YAMUX_MAX_MESSAGE_SIZE)
    unguarded = await _noise_messages_for_one_mib(monkeypatch)
    # upstream: each 64 KiB frame is split into 65,519 bytes and a 17-byte remainder
    assert sum(1 for n in unguarded if n == 17) >= 16, sorted(unguarded)[:20]
    assert 17 not in guarded
    assert len(guarded) < len(unguarded) - 12, (len(guarded), len(unguarded))


def test_frame_guard_refuses_a_changed_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(yamux, "MAX_MESSAGE_SIZE")
    with pytest.raises(guards.LibraryChanged):
        guards.fit_yamux_frames_to_noise()


async def test_only_noise_is_offered_so_plaintext_peers_cannot_connect() -> None:
    async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as node:
        offered = node.host.get_network().upgrader.security_multistream.transports  # type: ignore[attr-defined]
        assert [str(p) for p in offered] == ["/noise"]
        key_pair = create_new_key_pair()
        plaintext = new_host(key_pair=key_pair, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)})
        async with plaintext.run([multiaddr.Multiaddr(LOOPBACK)]):
            with pytest.raises(Exception), trio.fail_after(10):  # noqa: B017 - any failure to connect
                await plaintext.connect(info_from_p2p_addr(node.host.get_addrs()[0]))
            assert not plaintext.get_connected_peers()
            await plaintext.close()


async def test_gossipsub_is_v11_with_a_one_second_heartbeat() -> None:
    async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as node:
        assert [str(p) for p in GOSSIP_PROTOCOLS] == ["/meshsub/1.1.0", "/meshsub/1.0.0"]
        assert node.gossipsub.protocols == list(GOSSIP_PROTOCOLS)
        assert node.gossipsub.heartbeat_interval == 1
        assert node.dht.strict_validation


def test_port_guard_refuses_a_port_a_reuseport_listener_holds() -> None:
    with socket.socket() as other:
        # what libp2p's TCP listener does: SO_REUSEPORT lets a second one bind silently
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortInUse, match=str(port)):
            guards.check_port_free(f"/ip4/127.0.0.1/tcp/{port}")
        with pytest.raises(PortInUse):
            guards.check_port_free(f"/ip4/0.0.0.0/tcp/{port}")
    guards.check_port_free(f"/ip4/127.0.0.1/tcp/{port}")  # free again
    guards.check_port_free("/ip4/127.0.0.1/tcp/0")


async def test_second_node_on_the_same_port_fails_clearly() -> None:
    async with p2p_cluster(with_seed=False) as cluster:
        first = await cluster.start_node(bootstrap=[])
        taken = first.service.listen_addrs()[0].split("/p2p/")[0]
        with pytest.raises(PortInUse):
            await cluster.start_node(bootstrap=[], listen=taken)


def test_library_logging_reaches_our_handlers_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    guards.tame_logging()
    root = logging.getLogger("libp2p")
    assert root.propagate and root.level == logging.WARNING and not root.handlers
    connector = logging.getLogger("libp2p.network.auto_connector")
    assert connector.level == logging.NOTSET  # it pins INFO for itself on import
    with caplog.at_level(logging.INFO):
        connector.info("chatter")
        logging.getLogger("libp2p.swarm").warning("a real problem")
        logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: %s", "")
        logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: %s", "boom")
        logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: %s", "refused")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real problem", "Failed to read DHT message from stream: boom"]


async def test_stopping_a_node_closes_its_connections() -> None:
    async with p2p_cluster(with_seed=False) as cluster:
        a = await cluster.start_node(bootstrap=[])
        b = await cluster.start_node(bootstrap=a.service.listen_addrs())
        assert a.peer_id in b.service.connected_peers()
        await b.stop()
        # host.close() ran: the peer sees the connection go at once, not at a timeout
        await cluster.wait_until(lambda: b.peer_id not in a.service.connected_peers(),
                                 timeout=5, what="a sees b disconnect")


async def test_a_silent_listener_does_not_hang_the_dial() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as node:
            start = trio.current_time()
            with pytest.raises(DialError, match="took over"):
                await connect(node, Signer.generate().peer_id, [f"/ip4/127.0.0.1/tcp/{port}"], timeout=0.5)
            assert trio.current_time() - start < 2.0
        nursery.cancel_scope.cancel()
