"""Circuit Relay v2: relaying for others, and reaching a node nobody can dial.

py-libp2p 0.8.1 ships the protocol (``CircuitV2Protocol``: the HOP handler a
relay serves, the STOP handler a relayed node answers) and a transport that
dials ``…/p2p/<relay>/p2p-circuit/p2p/<peer>`` addresses. Its swarm never
dials such an address itself (defect 16 in docs/py-libp2p.md), so
``dial_circuit`` hands one to the transport, whose connection then serves
``new_stream`` like any other. The transport is built without the CLIENT role
(defect 14: with it, every dial also takes a reservation on the relay).

``Reservations`` keeps a node that is not publicly reachable reserved on
``want`` relays (seeds first, then any peer that answers the HOP protocol),
refreshes each before it expires, notices within ``CHECK`` seconds that a
relay's connection is gone and moves to another, and calls ``changed`` so the
advert is re-published with the new relayed addresses. A link that dies
silently (a pulled cable, a router that forgets the mapping: no reset, the
connection looks open for many minutes) is found by a liveness check: each
relay held is pinged (``/ipfs/ping/1.0.0``) every ``LIVENESS`` seconds, and
one that does not answer within ``PING_TIMEOUT`` is disconnected and left.

``DirectUpgrade`` turns a relayed connection into a direct one before job data
moves (``P2PService.try_direct``): the library's DCUtR (``dcutr.py``), whose
``initiate_hole_punch`` first dials the peer's direct addresses, then
exchanges observed addresses through the relay and dials both ways at once
(TCP simultaneous open from the listen port). Its service loop is not run:
that would hole-punch every relayed peer every 2 s; only its stream handler
is installed (so peers can punch to us) and tries are made on demand,
bounded, one per peer at a time, and not repeated within ``DIRECT_RETRY``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL, perform_ping_roundtrip
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig as LibRelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL, DCUtRProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL, CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from peerd.config import RelayConfig
from peerd.p2p.errors import DialError
from peerd.p2p.streams import FOREIGN_ERRORS, short
from protocol.reachability import CIRCUIT

log = logging.getLogger(__name__)

CHECK = 1.0  # how often reservations are checked: a lost relay is replaced within CHECK + a dial
REFRESH_AT = 0.5  # refresh a reservation once half its lifetime is gone
RETRY_AFTER = 10.0  # a relay that refused or failed is left alone this long
MAX_CIRCUITS_PER_PEER = 8
LIVENESS = 10.0  # a relay held is pinged this often ...
PING_TIMEOUT = 5.0  # ... and left when it does not answer within this (a silent death: moved within ~17 s)
DIRECT_TIMEOUT = 20.0  # one try_direct at most: a dial of direct addresses, then up to 3 hole-punch rounds
DIRECT_RETRY = 30.0  # after a failed try, the same peer is not tried again for this long
DIRECT_DIAL_TIMEOUT = 5  # each dial of a hole-punch round (the library's default is 10 s)


def relay_of(addr: str) -> str | None:
    """The relay's peer ID in a circuit address (``…/p2p/<relay>/p2p-circuit/p2p/<peer>``)."""
    head, sep, _ = addr.partition(CIRCUIT)
    if not sep or "/p2p/" not in head:
        return None
    return head.rsplit("/p2p/", 1)[1] or None


@dataclass(frozen=True, slots=True)
class RelayParts:
    """The library's relay pieces of one host."""

    protocol: CircuitV2Protocol
    transport: CircuitV2Transport
    serving: bool


def build_relay(host: IHost, settings: RelayConfig, *, serve: bool) -> RelayParts:
    """STOP (accept relayed connections) always; HOP (relay for others) when ``serve``."""
    limits = RelayLimits(
        duration=int(settings.circuit_duration),
        data=settings.circuit_bytes,
        max_circuit_conns=MAX_CIRCUITS_PER_PEER,
        max_reservations=settings.max_reservations,
    )
    protocol = CircuitV2Protocol(host, limits=limits, allow_hop=serve)
    # STOP only: no CLIENT role, or every dial through a relay also reserves a slot there (defect 14)
    transport = CircuitV2Transport(host, protocol, LibRelayConfig(roles=RelayRole.STOP, limits=limits))
    return RelayParts(protocol, transport, serve)


async def dial_circuit(host: IHost, parts: RelayParts, addr: str, *, timeout: float) -> None:
    """Connect to the peer at circuit address ``addr`` through its relay; DialError if we cannot."""
    try:
        maddr = multiaddr.Multiaddr(addr)
    except Exception as exc:  # multiaddr raises assorted types for bad text
        raise DialError(f"bad circuit address {addr!r}: {exc}") from exc
    try:
        with trio.fail_after(timeout):
            await parts.transport.dial(maddr)
    except trio.TooSlowError as exc:
        raise DialError(f"dialling through relay …{short(relay_of(addr) or '?')} took over {timeout:g}s") from exc
    except (*FOREIGN_ERRORS, ConnectionError, ValueError) as exc:
        raise DialError(f"cannot dial through relay …{short(relay_of(addr) or '?')}: {exc}") from exc


@dataclass
class Reservation:
    relay: str
    expires: float  # unix time
    addrs: tuple[str, ...]  # the relay's own addresses, each ending /p2p/<relay>
    granted: float = field(default_factory=time.time)

    def due(self, now: float) -> bool:
        return now >= self.granted + REFRESH_AT * (self.expires - self.granted)


async def reserve(host: IHost, relay: str, *, timeout: float) -> Reservation:
    """One RESERVE exchange with ``relay`` (connected already); DialError if refused."""
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(ID.from_base58(relay), [TProtocol(HOP_PROTOCOL)])
            try:
                await write_delimited_msg(stream, HopMessage(
                    type=HopMessage.RESERVE, peer=CircuitPeerId(id=host.get_id().to_bytes())))
                resp = await read_delimited_msg(stream, HopMessage)
            finally:
                with trio.CancelScope(shield=True):
                    await stream.reset()  # the relay's HOP handler otherwise waits 30 s for more
    except trio.TooSlowError as exc:
        raise DialError(f"reservation on …{short(relay)} took over {timeout:g}s") from exc
    except FOREIGN_ERRORS as exc:
        raise DialError(f"no reservation on …{short(relay)}: {exc}") from exc
    status = StatusCode(resp.status) if resp.HasField("status") else StatusCode.OK
    if status != StatusCode.OK or not resp.HasField("reservation"):
        raise DialError(f"relay …{short(relay)} refused a reservation ({status.name})")
    addrs = []
    for raw in resp.reservation.addrs:
        try:
            addrs.append(str(multiaddr.Multiaddr(bytes(raw))))
        except Exception:  # multiaddr raises assorted types; a relay's garbage address is skipped
            log.debug("relay …%s sent a bad address", short(relay), exc_info=True)
    return Reservation(relay, float(resp.reservation.expire), tuple(addrs))


@dataclass
class Reservations:
    """Keep reservations on ``want`` relays while ``needed()`` says so (see the module docstring)."""

    host: IHost
    want: int
    candidates: Callable[[], Sequence[tuple[str, Sequence[str]]]]  # (peer id, addrs), best first
    connect: Callable[[str, Sequence[str]], Awaitable[None]]  # make sure we are connected
    is_connected: Callable[[str], bool]
    needed: Callable[[], bool]
    changed: Callable[[], None]
    timeout: float
    held: dict[str, Reservation] = field(default_factory=dict)
    _failed: dict[str, float] = field(default_factory=dict)
    _alive: dict[str, float] = field(default_factory=dict)  # relay -> trio time it last answered (or was reserved)
    moves: int = 0

    def _known_addrs(self, relay: str, given: Sequence[str]) -> list[str]:
        suffix = f"/p2p/{relay}"
        out = [a for a in given if a.endswith(suffix) and CIRCUIT not in a]
        if not out:
            try:
                out = [f"{a}{suffix}" for a in self.host.get_peerstore().addrs(ID.from_base58(relay))]
            except FOREIGN_ERRORS:
                out = []
        return [a for a in out if CIRCUIT not in a]

    def relayed_addrs(self, self_id: str) -> list[str]:
        """Our addresses through the relays we hold, public ones first."""
        out: list[str] = []
        for res in self.held.values():
            for addr in sorted(res.addrs, key=lambda a: "/ip4/127." in a):
                out.append(f"{addr}{CIRCUIT}/p2p/{self_id}")
        return out

    async def run(self) -> None:
        while True:
            await self.tick()
            await trio.sleep(CHECK)

    async def tick(self) -> None:
        now = time.time()
        before = set(self.held)
        if not self.needed():
            self.held.clear()
        for relay, res in list(self.held.items()):
            if not self.is_connected(relay) or res.expires <= now:
                log.warning("relay …%s is gone; moving to another", short(relay))
                del self.held[relay]
                self._failed[relay] = trio.current_time()
                self.moves += 1
        if self.needed():
            await self._check_alive()
            await self._refresh(now)
            await self._fill()
        if set(self.held) != before:
            self.changed()

    async def _check_alive(self) -> None:
        """Ping every relay held whose last answer is ``LIVENESS`` old, at once; leave those that do not answer."""
        due = [r for r in self.held if trio.current_time() - self._alive.get(r, -LIVENESS) >= LIVENESS]
        silent: list[str] = []
        async with trio.open_nursery() as nursery:
            for relay in due:
                nursery.start_soon(self._ping, relay, silent)
        for relay in silent:
            log.warning("relay …%s does not answer pings; moving to another", short(relay))
            self.held.pop(relay, None)
            self._failed[relay] = trio.current_time()
            self.moves += 1
            with trio.move_on_after(PING_TIMEOUT):  # closing a dead link must not hang us
                try:
                    await self.host.disconnect(ID.from_base58(relay))
                except FOREIGN_ERRORS as exc:
                    log.debug("closing the connection to relay …%s: %s", short(relay), exc)

    async def _ping(self, relay: str, silent: list[str]) -> None:
        try:
            with trio.fail_after(PING_TIMEOUT):
                stream = await self.host.new_stream(ID.from_base58(relay), [PING_PROTOCOL])
                try:
                    await perform_ping_roundtrip(stream)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await stream.reset()
            self._alive[relay] = trio.current_time()
        except (trio.TooSlowError, ValueError, *FOREIGN_ERRORS) as exc:
            log.debug("ping to relay …%s failed: %r", short(relay), exc)
            silent.append(relay)

    async def _refresh(self, now: float) -> None:
        for relay, res in list(self.held.items()):
            if not res.due(now):
                continue
            try:
                self.held[relay] = await reserve(self.host, relay, timeout=self.timeout)
            except DialError as exc:
                log.info("refreshing the reservation on …%s failed: %s", short(relay), exc)

    async def _fill(self) -> None:
        for relay, addrs in self.candidates():
            if len(self.held) >= self.want:
                return
            if relay in self.held or trio.current_time() - self._failed.get(relay, -RETRY_AFTER) < RETRY_AFTER:
                continue
            try:
                await self.connect(relay, addrs)
                res = await reserve(self.host, relay, timeout=self.timeout)
                if not res.addrs:  # the relay did not say: the addresses we know it by
                    res.addrs = tuple(self._known_addrs(relay, addrs))
                self.held[relay] = res
                self._alive[relay] = trio.current_time()
                log.info("reserved on relay …%s (%s)", short(relay), ", ".join(res.addrs))
            except DialError as exc:
                log.debug("no reservation on …%s: %s", short(relay), exc)
                self._failed[relay] = trio.current_time()


class DirectUpgrade:
    """On-demand DCUtR: ``attempt(peer)`` answers whether a direct connection is open afterwards."""

    COUNTERS = ("direct_upgrades", "direct_upgrade_failures")

    def __init__(self, host: IHost, has_direct: Callable[[str], bool], *, timeout: float = DIRECT_TIMEOUT) -> None:
        self._dcutr = DCUtRProtocol(host, dial_timeout=DIRECT_DIAL_TIMEOUT)
        # the library's handler catches everything itself and closes its stream (like the relay's, defect 16)
        host.set_stream_handler(DCUTR_PROTOCOL, self._dcutr._handle_dcutr_stream)
        self._has_direct = has_direct
        self._timeout = timeout
        self._locks: dict[str, trio.Lock] = {}
        self._failed: dict[str, float] = {}
        self.counters = dict.fromkeys(self.COUNTERS, 0)

    async def attempt(self, peer: str) -> bool:
        if self._has_direct(peer):
            return True
        lock = self._locks.setdefault(peer, trio.Lock())
        try:
            async with lock:
                return self._has_direct(peer) or await self._try(peer)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(peer, None)  # kept only while someone uses it

    async def _try(self, peer: str) -> bool:
        now = trio.current_time()
        self._failed = {p: t for p, t in self._failed.items() if now - t < DIRECT_RETRY}  # bounded by recent tries
        if peer in self._failed:
            return False
        with trio.move_on_after(self._timeout):
            try:
                await self._dcutr.initiate_hole_punch(ID.from_base58(peer))
            except FOREIGN_ERRORS as exc:  # it catches most itself; a closing host raises the rest
                log.debug("hole punching to …%s failed: %s", short(peer), exc)
        took = trio.current_time() - now
        if self._has_direct(peer):
            self.counters["direct_upgrades"] += 1
            log.info("direct connection to …%s after %.1fs (hole punching)", short(peer), took)
            return True
        self.counters["direct_upgrade_failures"] += 1
        self._failed[peer] = trio.current_time()
        log.info("no direct connection to …%s after %.1fs: it stays relayed", short(peer), took)
        return False
