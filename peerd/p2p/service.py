"""``P2PService``: the network layer of a node, as one trio service.

It owns the libp2p node (``host.open_node``), keeps the node joined to the
network (``discovery``), publishes our advert and fills the peer table from
gossip (``adverts``) and from direct syncs over the connections it dials
(``sync``), expires stale entries, and gives the rest of the daemon a small
stream API (``set_stream_handler`` / ``open_stream``) whose streams time out
and whose handlers cannot take the host down.

Start it with ``await nursery.start(service.run)``: it returns once the node
listens, has dialled the reachable seeds, filled its routing table and
subscribed to the advert topic. Cancel the nursery to stop it; the host is
closed on the way out.

A seed (``seed=True``) is a DHT server and gossip relay with no advert of its
own; by default (``[relay] serve = "auto"``) it also relays connections for
nodes behind home routers (Circuit Relay v2, ``relay.py``).

Every node checks whether peers can dial it (``reachability.Prober``, a
dial-back through its peers); one that they cannot keeps reservations on
``relay.reservations`` relays (``relay.Reservations``) and advertises its
circuit addresses instead of its own. ``reachability()`` is the view
``peerd status`` shows; ``is_relayed(peer)`` says whether our connection to a
peer goes through a relay (large transfers must not), and ``try_direct(peer)``
tries to replace such a connection by a direct one (``relay.DirectUpgrade``:
DCUtR hole punching, bounded) before job data moves. A seed's multiaddr
(``listen_addrs()``) is stable across restarts when it keeps its key and a
fixed port.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import trio
from libp2p.abc import INetConn, ISubscriptionAPI
from libp2p.custom_types import TProtocol
from libp2p.utils.address_validation import expand_wildcard_address

from peerd.config import NetworkConfig, RelayConfig
from peerd.market.peertable import PeerEntry, PeerTable, TableLimits
from peerd.p2p.adverts import (
    ADVERT_TOPIC,
    MAX_ADDRS,
    AcceptHook,
    AdvertPublisher,
    AdvertSource,
    Clock,
    gossip_validator,
)
from peerd.p2p.dialing import StreamOpening, connect, is_connected, open_stream, to_id
from peerd.p2p.discovery import TARGET_PEERS, Candidate, Discovery, parse_seeds
from peerd.p2p.errors import NotRunning
from peerd.p2p.events import ConnectionEvents
from peerd.p2p.host import Libp2pNode, open_node
from peerd.p2p.reachability import Prober, ReachabilityView, ask_dialback, serve_dialback, view
from peerd.p2p.relay import DirectUpgrade, Reservations
from peerd.p2p.streams import Stream, StreamHandler, guard_handler, is_relayed_conn
from peerd.p2p.sync import SYNC_PROTOCOL, AdvertSync
from protocol import dialback
from protocol.messages import Advert
from protocol.schema import Value
from protocol.signing import Signer

log = logging.getLogger(__name__)

EXPIRY_TICK = 1.0
SYNC_RETRY_DELAYS = (0.0, 0.25, 1.0)


class P2PService:
    """Host + discovery + adverts + peer table + streams for one node."""

    def __init__(
        self,
        signer: Signer,
        listen: Sequence[str],
        bootstrap: Sequence[str],
        *,
        seed: bool,
        net: NetworkConfig,
        advert_source: AdvertSource | None,
        on_advert: AcceptHook | None = None,
        table_limits: TableLimits | None = None,
        target_peers: int = TARGET_PEERS,
        clock: Clock = time.time,
        relay: RelayConfig | None = None,
    ) -> None:
        if seed and advert_source is not None:
            raise ValueError("a seed publishes no advert: pass advert_source=None")
        self._signer = signer
        self._listen = list(listen)
        self._seeds = parse_seeds(bootstrap, signer.peer_id)
        self.seed = seed
        self.net = net
        self._advert_source = advert_source
        self._on_advert = on_advert
        self._advert_accepted = trio.Event()  # set (and replaced) on every advert the table accepts
        self._target = target_peers
        self._clock = clock
        self.peer_id: str = signer.peer_id
        self.table = PeerTable(signer.peer_id, table_limits)
        self._handlers: dict[str, StreamHandler] = {}
        self._node: Libp2pNode | None = None
        self._publisher: AdvertPublisher | None = None
        self._sync: AdvertSync | None = None
        self._discovery: Discovery | None = None
        self._events: ConnectionEvents | None = None
        self._own_counters = {"handler_errors": 0, "data_streams_direct": 0, "data_streams_relayed": 0}
        self.relay = relay or RelayConfig()
        self.serves_relay = self.relay.serve == "on" or (self.relay.serve == "auto" and seed)
        self._prober: Prober | None = None
        self._reservations: Reservations | None = None
        self._direct: DirectUpgrade | None = None

    # ------------------------------------------------------------ read API
    @property
    def running(self) -> bool:
        return self._node is not None

    def _require(self) -> Libp2pNode:
        if self._node is None:
            raise NotRunning("the p2p service is not running")
        return self._node

    def listen_addrs(self) -> list[str]:
        """Dialable multiaddrs ending in /p2p/<our id>, with the real ports."""
        node = self._require()
        out: list[str] = []
        for addr in node.host.get_transport_addrs():
            for concrete in expand_wildcard_address(addr):
                text = f"{concrete}/p2p/{self.peer_id}"
                if text not in out:
                    out.append(text)
        # loopback last: peers elsewhere cannot use it
        return sorted(out, key=lambda a: "/ip4/127." in a or "/ip6/::1/" in a)

    def reachability(self) -> ReachabilityView:
        """Whether peers can dial us: public, relayed (with our circuit addresses), unreachable, unknown."""
        dialable = self._prober.dialable if self._prober is not None else None
        held = self._reservations
        return view(dialable, held.relayed_addrs(self.peer_id) if held else [], held.moves if held else 0)

    def is_relayed(self, peer_id: str) -> bool:
        """True when every open connection to ``peer_id`` goes through a relay (False: direct or none)."""
        conns = self._open_conns(peer_id)
        return bool(conns) and all(is_relayed_conn(c) for c in conns)

    def has_direct(self, peer_id: str) -> bool:
        """True when some open connection to ``peer_id`` does not go through a relay."""
        return any(not is_relayed_conn(c) for c in self._open_conns(peer_id))

    def _open_conns(self, peer_id: str) -> list[INetConn]:
        if self._node is None:
            return []
        return [c for c in self._node.host.get_network().connections.get(to_id(peer_id), []) if not c.is_closed]

    async def try_direct(self, peer_id: str) -> bool:
        """Best effort, bounded (``relay.DIRECT_TIMEOUT``): a direct connection to a peer we reach through a
        relay, by DCUtR hole punching. True when one is open afterwards (at once when one already is)."""
        self._require()
        if self._direct is None:
            return self.has_direct(peer_id)
        return await self._direct.attempt(peer_id)

    def note_data_stream(self, relayed: bool) -> None:
        """Count a job-data stream by the path it took (``transfer.blob_opener``), for status and tests."""
        self._own_counters["data_streams_relayed" if relayed else "data_streams_direct"] += 1

    def advertised_addrs(self) -> list[str]:
        """What our advert carries: our circuit addresses while peers cannot dial us, else listen_addrs()."""
        reach = self.reachability()
        return list(reach.relay_addrs) if reach.relay_addrs else self.listen_addrs()

    def connected_peers(self) -> list[str]:
        if self._node is None:
            return []
        return sorted(str(p) for p in self._node.host.get_connected_peers())

    def open_streams(self) -> int:
        """Streams open on all our connections (leak watch)."""
        if self._node is None:
            return 0
        conns = self._node.host.get_network().connections.values()
        return sum(len(c.get_streams()) for group in conns for c in group)

    def routing_peers(self) -> list[str]:
        return sorted(self._discovery.routing_peers()) if self._discovery else []

    @property
    def counters(self) -> dict[str, int]:
        """Advert outcomes (see peertable.AdvertVerdict) and network events, by name."""
        out = dict(self.table.counters)
        out.update(self._own_counters)
        for kind, part in (
            (AdvertPublisher, self._publisher),
            (AdvertSync, self._sync),
            (Discovery, self._discovery),
        ):
            out.update(part.counters if part is not None else dict.fromkeys(kind.COUNTERS, 0))
        out["events_dropped"] = self._events.dropped if self._events is not None else 0
        # reachability as figures, for status and metrics until StatusView carries reachability()
        out["reachable"] = 1 if self._prober is not None and self._prober.dialable else 0
        out["relays_held"] = len(self._reservations.held) if self._reservations is not None else 0
        out["relay_moves"] = self._reservations.moves if self._reservations is not None else 0
        out.update(self._direct.counters if self._direct is not None else dict.fromkeys(DirectUpgrade.COUNTERS, 0))
        return out

    @property
    def own_advert(self) -> bytes | None:
        """Our latest sealed advert envelope (None for a seed or before start)."""
        return self._publisher.current if self._publisher else None

    def status(self) -> dict[str, Value]:
        now = self._clock()
        return {
            "peer_id": self.peer_id,
            "seed": self.seed,
            "running": self.running,
            "addrs": [*self.listen_addrs()] if self.running else [],
            "connected": len(self.connected_peers()),
            "streams": self.open_streams(),
            "seeds": len(self._seeds),
            "seeds_connected": self._discovery.seeds_connected() if self._discovery else 0,
            "routing_table": len(self.routing_peers()),
            "peers": len(self.table.entries(now)),
            "counters": dict(self.counters),
            "relay_serving": self.serves_relay,
            "reachability": str(self.reachability().state),
        }

    async def wait_advert(self) -> None:
        """Return once the peer table accepts another advert (from gossip or a sync)."""
        await self._advert_accepted.wait()

    def _accepted(self, entry: PeerEntry) -> None:
        self._advert_accepted.set()
        self._advert_accepted = trio.Event()
        if self._on_advert is not None:
            self._on_advert(entry)

    # ------------------------------------------------------------ control
    def advert_changed(self) -> None:
        """Our resources changed: re-publish soon (at most one advert per second)."""
        if self._publisher is not None:
            self._publisher.changed()

    async def flush_advert(self) -> bool:
        """Re-publish now (paced) and return once an advert built after this call is out.

        True when it was published, False when publishing failed or this node
        publishes no advert (a seed, or no advert_source). Bound it yourself
        (``trio.move_on_after``) if you must not wait long.
        """
        if self._publisher is None:
            return False
        return await self._publisher.flush()

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id``; ``handler`` gets a Stream, closed/reset when it returns/raises."""
        self._handlers[protocol_id] = handler
        if self._node is not None:
            self._install(self._node, protocol_id, handler)

    def open_stream(self, peer_id: str, protocol_id: str, addrs: Sequence[str] | None = None) -> StreamOpening:
        """A stream to ``peer_id``: ``await`` it, or ``async with`` it.

        Dials first when not connected, using ``addrs`` (e.g. from the
        advert), then the peerstore. DialError / StreamError on failure.
        """
        known = list(addrs) if addrs is not None else self._advertised_addrs(peer_id)

        async def opener() -> Stream:
            return await open_stream(
                self._require(),
                peer_id,
                protocol_id,
                known,
                connect_timeout=self.net.connect_timeout,
                io_timeout=self.net.io_timeout,
            )

        return StreamOpening(opener)

    # ------------------------------------------------------------ run
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_node(
            self._signer,
            self._listen,
            topics=frozenset({ADVERT_TOPIC}),
            connect_timeout=self.net.connect_timeout,
            relay=self.relay,
            serve_relay=self.serves_relay,
        ) as node:
            try:
                await self._serve(node, task_status)
            finally:
                self._node = None

    async def _serve(self, node: Libp2pNode, task_status: trio.TaskStatus[None]) -> None:
        self._node = node
        self._events = ConnectionEvents()
        node.host.get_network().register_notifee(self._events)
        if self._advert_source is not None:
            self._publisher = AdvertPublisher(
                node, self._signer, self.net, self._relayed_source, self.advertised_addrs, self._clock
            )
            self._publisher.stamp()  # so the first syncs already carry our advert
        self._sync = AdvertSync(node, self.table, lambda: self.own_advert, self.net, self._clock, self._accepted)
        self._install(node, SYNC_PROTOCOL, self._sync.serve)
        self._install(node, dialback.PROTOCOL, _serve_dialback)
        self._prober = Prober(self._ask_dialback, self._probe_peers)
        self._reservations = Reservations(
            node.host, self.relay.reservations, self._relay_candidates,
            lambda relay, addrs: connect(node, relay, addrs, timeout=self.net.connect_timeout, redial=True),
            lambda peer: is_connected(node, peer),
            lambda: self._prober is not None and self._prober.dialable is False and not self.serves_relay,
            self.advert_changed, self.net.connect_timeout,
        )
        self._direct = DirectUpgrade(node.host, self.has_direct)
        for protocol_id, handler in self._handlers.items():
            self._install(node, protocol_id, handler)
        node.pubsub.set_topic_validator(
            ADVERT_TOPIC, gossip_validator(self.table, self._clock, self._accepted), False
        )
        subscription = await node.pubsub.subscribe(ADVERT_TOPIC)
        self._discovery = Discovery(node, self._seeds, self.net, self._advert_candidates, target_peers=self._target)
        joined = await self._discovery.join()
        log.info("p2p %s listening on %s; %d/%d seeds reachable",
                 self.peer_id, ", ".join(self.listen_addrs()), joined, len(self._seeds))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, subscription)
            nursery.start_soon(self._follow_connections, node, nursery)
            nursery.start_soon(self._discovery.run)
            nursery.start_soon(self._expire)
            nursery.start_soon(self._prober.run)
            nursery.start_soon(self._reservations.run)
            if self._publisher is not None:
                await nursery.start(self._publisher.run)
            task_status.started()

    def _install(self, node: Libp2pNode, protocol_id: str, handler: StreamHandler) -> None:
        def count_error() -> None:
            self._own_counters["handler_errors"] += 1

        node.host.set_stream_handler(
            TProtocol(protocol_id),
            guard_handler(handler, io_timeout=self.net.io_timeout, on_error=count_error),
        )

    def _relayed_source(self, now: float) -> Advert:
        """The advert source's advert, with our circuit addresses while peers cannot dial us."""
        assert self._advert_source is not None
        base = self._advert_source(now)
        relayed = self.reachability().relay_addrs
        return dataclasses.replace(base, addrs=relayed[:MAX_ADDRS]) if relayed else base

    async def _ask_dialback(self, peer_id: str) -> bool:
        ports = sorted({int(a.split("/tcp/")[1].split("/")[0]) for a in self.listen_addrs() if "/tcp/" in a})
        return await ask_dialback(self.open_stream(peer_id, dialback.PROTOCOL), ports)

    def _probe_peers(self) -> list[str]:
        """Peers to ask for a dial-back: connected seeds first, never through a relay."""
        connected = [p for p in self.connected_peers() if not self.is_relayed(p)]
        seeds = {s.peer_id for s in self._seeds}
        return sorted(connected, key=lambda p: p not in seeds)

    def _relay_candidates(self) -> list[tuple[str, list[str]]]:
        """Relays to try: the seeds, then peers we are connected to directly."""
        out = [(s.peer_id, list(s.addrs)) for s in self._seeds]
        known = {p for p, _ in out}
        out += [(p, []) for p in self.connected_peers() if p not in known and not self.is_relayed(p)]
        return out

    def _advert_candidates(self) -> list[Candidate]:
        return [Candidate(e.peer_id, list(e.addrs)) for e in self.table.entries(self._clock())]

    def _advertised_addrs(self, peer_id: str) -> list[str]:
        entry = self.table.get(peer_id, self._clock())
        return list(entry.addrs) if entry is not None else []

    async def _follow_connections(self, node: Libp2pNode, nursery: trio.Nursery) -> None:
        """Sync adverts over every connection we dialled; forget peers that left.

        The dialling side pulls: a newcomer learns the network from the peers
        it dials, and they learn its advert from its first gossip publish.
        """
        assert self._events is not None and self._sync is not None
        async for peer_id, up, we_dialled in self._events.receive:
            if up and we_dialled and self._sync.wants(peer_id):
                nursery.start_soon(self._sync_with, node, peer_id)
            elif not up and not is_connected(node, peer_id):
                self._sync.forget(peer_id)

    async def _sync_with(self, node: Libp2pNode, peer_id: str) -> None:
        assert self._sync is not None
        for delay in SYNC_RETRY_DELAYS:
            await trio.sleep(delay)
            if not is_connected(node, peer_id):
                return
            if await self._sync.fetch(peer_id):
                return
        self._sync.give_up(peer_id)

    async def _expire(self) -> None:
        while True:
            await trio.sleep(EXPIRY_TICK)
            for peer_id in self.table.expire(self._clock()):
                log.info("advert of …%s expired", peer_id[-8:])


async def _serve_dialback(stream: Stream) -> None:
    await serve_dialback(stream, stream.remote_address(), stream.relayed)


async def _drain(subscription: ISubscriptionAPI) -> None:
    """Adverts are taken in by the topic validator; empty the channel so it never fills."""
    async for _ in subscription:
        pass


__all__ = ["P2PService", "Stream", "StreamOpening"]
