"""Build and run the one libp2p node of a process: host, gossipsub and Kad-DHT.

This is the only code that constructs a py-libp2p host. ``open_node`` is an
async context manager that yields a running ``Libp2pNode`` and applies the
per-host guards of docs/py-libp2p.md:

* Noise is the only security transport (defect 1: plaintext is offered by
  default and a peer could downgrade); TCP + Noise + yamux, standard identify.
* pubsub and the DHT are running before the caller can dial anyone (defect 8:
  pubsub only sees connections opened after it started).
* gossipsub v1.1 (and v1.0 for old peers), never v1.2 (IDONTWANT doubles CPU),
  with a 1 s heartbeat (defect 12: the default is 120 s).
* the gossip seqno counter starts from the nanosecond clock, as go-libp2p
  does, not from whole seconds (a node restarted soon after publishing reused
  seqnos and its messages were dropped as duplicates).
* the DHT runs in server mode with strict record validation (defect 9).
* Circuit Relay v2 (``relay.build_relay``): every node accepts relayed
  connections (STOP); a node that relays for others also serves HOP.
* on exit, ``host.close()`` runs first, bounded, while the library's tasks
  are still alive (defect 6: leaving ``host.run()`` alone leaks connections
  and tasks; and a connection whose close is cancelled half-way keeps its
  socket for ever, so the library runs behind a shield, see ``open_node``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_noise_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_V10, PROTOCOL_ID_V11 as GOSSIPSUB_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID, Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from peerd.config import RelayConfig
from peerd.p2p.errors import BadAddress, P2PError
from peerd.p2p.guards import apply_library_guards, check_port_free
from peerd.p2p.relay import RelayParts, build_relay
from protocol.signing import Signer

log = logging.getLogger(__name__)

GOSSIP_PROTOCOLS = (GOSSIPSUB_V11, GOSSIPSUB_V10)
HEARTBEAT_SECONDS = 1
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class GossipParams:
    """Mesh degrees and limits for gossipsub.

    Every mesh peer sends us a copy of every message, and each copy costs
    py-libp2p milliseconds of CPU. With the usual 6/4/12 the mesh grew to
    every peer (up to 12): measured 10 nodes in one process, 10.7 ms of CPU
    per delivery against 3.6 ms with 4/3/8, whose meshes stay at 3 to 5.
    """

    degree: int = 4
    degree_low: int = 3
    degree_high: int = 8
    # Built-in relay limit per forwarding peer and topic; ours is per source (peertable).
    max_messages_per_topic_per_second: float = 50.0


@dataclass(frozen=True, slots=True)
class Libp2pNode:
    """The running pieces; only ``peerd.p2p`` code touches them."""

    host: IHost
    pubsub: Pubsub
    gossipsub: GossipSub
    dht: KadDHT
    relay: RelayParts

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())


def parse_listen(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    parsed = []
    for text in addrs:
        try:
            parsed.append(multiaddr.Multiaddr(text))
        except Exception as exc:  # multiaddr raises assorted types for bad text
            raise BadAddress(f"bad listen address {text!r}: {exc}") from exc
    if not parsed:
        raise BadAddress("no listen address given")
    return parsed


def connection_config(connect_timeout: float) -> ConnectionConfig:
    """Upgrade timeouts from our config; no auto-connector (discovery picks peers).

    The library's auto-connector dials every routable peer in the peerstore
    until it holds 100 connections; ``Discovery`` keeps ``target_peers``
    instead, so its watermarks are zero. Pruning above 300 stays.
    """
    return ConnectionConfig(
        min_connections=0,
        low_watermark=0,
        dial_timeout=connect_timeout,
        inbound_upgrade_timeout=connect_timeout,
        outbound_upgrade_timeout=connect_timeout,
        outbound_stream_protocol_negotiation_timeout=connect_timeout,
        inbound_stream_protocol_negotiation_timeout=connect_timeout,
    )


def build_host(signer: Signer, listen: Sequence[multiaddr.Multiaddr], connect_timeout: float) -> IHost:
    """A host with the node's Ed25519 identity that speaks Noise only."""
    key_pair = create_new_key_pair(signer.private_seed())
    noise = NoiseTransport(key_pair, noise_privkey=create_noise_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        listen_addrs=list(listen),
        connection_config=connection_config(connect_timeout),
    )


def build_pubsub(host: IHost, params: GossipParams, topics: frozenset[str]) -> tuple[Pubsub, GossipSub]:
    router = GossipSub(
        protocols=list(GOSSIP_PROTOCOLS),
        degree=params.degree,
        degree_low=params.degree_low,
        degree_high=params.degree_high,
        heartbeat_interval=HEARTBEAT_SECONDS,
        max_messages_per_topic_per_second=params.max_messages_per_topic_per_second,
    )
    # The v1.4 "GRAFT flood" check times a GRAFT from the moment the *grafting*
    # peer pruned us (handle_prune records the sender), so a peer that pruned
    # us and wants us back within 10 s is refused and pruned again: the mesh
    # churns and logs a warning each heartbeat. v1.1's backoff rules (still
    # enforced by handle_graft) are what we rely on.
    router.graft_flood_threshold = 0.0
    pubsub = Pubsub(host, router, allowed_topics=topics)
    # Gossip seqno from the ns clock, so a restarted node never reuses one.
    pubsub.counter = time.time_ns()
    return pubsub, router


@asynccontextmanager
async def open_node(
    signer: Signer,
    listen: Sequence[str],
    *,
    topics: frozenset[str],
    connect_timeout: float = 10.0,
    gossip: GossipParams | None = None,
    relay: RelayConfig | None = None,
    serve_relay: bool = False,
) -> AsyncIterator[Libp2pNode]:
    """Listen on ``listen`` with pubsub and the DHT running; close everything on exit.

    The library's own tasks run in a task of their own behind a shield: a
    cancellation of the caller does not reach them half-way (cancelled
    mid-close, a connection marks itself closed and keeps its socket open for
    ever); instead the exit of this context closes the host first, then stops
    the services, all within CLOSE_TIMEOUT.

    Raises PortInUse when a configured port is taken, P2PError when the host
    cannot listen.
    """
    apply_library_guards()
    for addr in listen:
        check_port_free(addr)
    maddrs = parse_listen(listen)
    host = build_host(signer, maddrs, connect_timeout)
    pubsub, router = build_pubsub(host, gossip or GossipParams(), topics)
    dht = KadDHT(host, DHTMode.SERVER, strict_validation=True)
    parts = build_relay(host, relay or RelayConfig(), serve=serve_relay)
    node = Libp2pNode(host=host, pubsub=pubsub, gossipsub=router, dht=dht, relay=parts)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_run_node, node, maddrs, stop)
        try:
            yield node
        finally:
            stop.set()


async def _run_node(
    node: Libp2pNode,
    maddrs: Sequence[multiaddr.Multiaddr],
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope(shield=True) as scope:
        async with node.host.run(maddrs):
            check_listening(node.host, maddrs)
            async with (
                background_trio_service(node.pubsub),
                background_trio_service(node.gossipsub),
                background_trio_service(node.dht),
                background_trio_service(node.relay.protocol),
            ):
                await node.pubsub.wait_until_ready()
                task_status.started()
                await stop.wait()
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                await node.host.close()
    if scope.cancelled_caught:
        log.warning("libp2p node did not shut down within %.0fs; abandoned", CLOSE_TIMEOUT)


def check_listening(host: IHost, maddrs: Sequence[multiaddr.Multiaddr]) -> None:
    """The swarm only logs a failed listen at debug level; fail loudly instead."""
    listeners = host.get_network().listeners
    failed = [str(m) for m in maddrs if str(m) not in listeners]
    if failed:
        raise P2PError(f"cannot listen on {', '.join(failed)}")
