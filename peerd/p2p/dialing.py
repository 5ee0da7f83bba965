"""Dialling peers and opening streams, each bounded by a timeout.

``connect`` puts a peer's addresses in the peerstore and dials it under
``trio.fail_after`` (docs/py-libp2p.md, defect 4: a listener that never speaks holds the Noise
handshake for minutes). A deliberate re-dial first evicts the peer from the
swarm's negative dial cache (defect 7: after one failed dial a peer is refused
for 60 s even when it is back). ``open_stream`` connects when needed, then
opens and negotiates the stream under the same timeout.

A peer behind a home router advertises circuit addresses
(``…/p2p/<relay>/p2p-circuit/p2p/<peer>``); the swarm never dials those
(defect 16), so ``connect`` tries the direct addresses first and then each
circuit address through ``relay.dial_circuit``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr.exceptions import Error as MultiaddrError, ProtocolLookupError

from peerd.p2p.errors import BadAddress, DialError, StreamError
from peerd.p2p.host import Libp2pNode
from peerd.p2p.relay import dial_circuit
from peerd.p2p.streams import FOREIGN_ERRORS, Stream, short
from protocol.reachability import is_circuit

log = logging.getLogger(__name__)

PEERSTORE_TTL = 3600


def to_id(peer_id: str) -> ID:
    try:
        pid = ID.from_base58(peer_id)
    except Exception as exc:  # base58 raises ValueError and friends
        raise BadAddress(f"{peer_id[:60]!r} is not a peer ID") from exc
    if str(pid) != peer_id:
        raise BadAddress(f"{peer_id[:60]!r} is not a canonical peer ID")
    return pid


def split_p2p(addr: str) -> tuple[multiaddr.Multiaddr, str | None]:
    """A multiaddr without its trailing /p2p/<id>, and that id (or None)."""
    try:
        maddr = multiaddr.Multiaddr(addr)
    except Exception as exc:  # multiaddr raises assorted types for bad text
        raise BadAddress(f"bad multiaddr {addr!r}: {exc}") from exc
    try:
        peer = maddr.value_for_protocol("p2p")
    except ProtocolLookupError:  # no /p2p part
        peer = None
    except MultiaddrError as exc:
        raise BadAddress(f"bad /p2p part in {addr!r}: {exc}") from exc
    if not peer:
        return maddr, None
    return maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}")), str(peer)


def circuit_addrs(peer_id: str, addrs: Sequence[str]) -> list[str]:
    """The addresses that reach ``peer_id`` through a relay."""
    return [a for a in addrs if is_circuit(a) and a.endswith(f"/p2p/{peer_id}")]


def transport_addrs(peer_id: str, addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """The direct addresses of ``peer_id``: circuits and those naming another peer are dropped."""
    out = []
    for addr in addrs:
        if is_circuit(addr):
            continue
        try:
            maddr, named = split_p2p(addr)
        except BadAddress:
            log.debug("ignoring bad address %r of peer …%s", addr, short(peer_id))
            continue
        if named is None or named == peer_id:
            out.append(maddr)
    return out


def is_connected(node: Libp2pNode, peer_id: str) -> bool:
    conns = node.host.get_network().connections.get(to_id(peer_id))
    return conns is not None and any(not c.is_closed for c in conns)


async def connect(
    node: Libp2pNode,
    peer_id: str,
    addrs: Sequence[str] = (),
    *,
    timeout: float,
    redial: bool = False,
) -> None:
    """Make sure we hold a connection to ``peer_id``, direct or relayed; DialError if we cannot."""
    circuits = circuit_addrs(peer_id, addrs)
    if is_connected(node, peer_id):
        return
    if not circuits or transport_addrs(peer_id, addrs):
        try:
            await _connect_direct(node, peer_id, addrs, timeout=timeout, redial=redial or bool(circuits))
            return
        except DialError:
            if not circuits:
                raise
    failure: DialError | None = None
    for addr in circuits:
        try:
            await dial_circuit(node.host, node.relay, addr, timeout=timeout)
            return
        except DialError as exc:
            failure = exc
            log.debug("circuit %s failed: %s", addr, exc)
    assert failure is not None
    raise failure


async def _connect_direct(
    node: Libp2pNode, peer_id: str, addrs: Sequence[str], *, timeout: float, redial: bool
) -> None:
    pid = to_id(peer_id)
    maddrs = transport_addrs(peer_id, addrs)
    if maddrs:
        node.host.get_peerstore().add_addrs(pid, maddrs, PEERSTORE_TTL)
    if is_connected(node, peer_id):
        return
    if redial:
        node.host.get_network().unblock_peer(pid)  # type: ignore[attr-defined]
    try:
        known = node.host.get_peerstore().addrs(pid)
    except FOREIGN_ERRORS:
        known = []
    try:
        with trio.fail_after(timeout):
            await node.host.connect(PeerInfo(pid, known))
    except trio.TooSlowError as exc:
        raise DialError(f"dialling peer …{short(peer_id)} took over {timeout:g}s") from exc
    except FOREIGN_ERRORS as exc:
        raise DialError(f"cannot reach peer …{short(peer_id)}: {exc}") from exc


async def open_raw_stream(
    node: Libp2pNode,
    peer_id: str,
    protocol_id: str,
    *,
    timeout: float,
    io_timeout: float,
) -> Stream:
    """A negotiated stream on an existing (or newly dialled) connection."""
    try:
        with trio.fail_after(timeout):
            raw = await node.host.new_stream(to_id(peer_id), [TProtocol(protocol_id)])
    except trio.TooSlowError as exc:
        raise StreamError(f"opening {protocol_id} to …{short(peer_id)} took over {timeout:g}s") from exc
    except FOREIGN_ERRORS as exc:
        raise StreamError(f"cannot open {protocol_id} to …{short(peer_id)}: {exc}") from exc
    return Stream(raw, io_timeout=io_timeout)


async def open_stream(
    node: Libp2pNode,
    peer_id: str,
    protocol_id: str,
    addrs: Sequence[str] = (),
    *,
    connect_timeout: float,
    io_timeout: float,
) -> Stream:
    """Dial ``peer_id`` if needed (a deliberate re-dial) and open a stream to it."""
    await connect(node, peer_id, addrs, timeout=connect_timeout, redial=True)
    return await open_raw_stream(
        node, peer_id, protocol_id, timeout=connect_timeout, io_timeout=io_timeout
    )


class StreamOpening:
    """What ``P2PService.open_stream`` returns: await it, or use it with ``async with``.

    ``stream = await svc.open_stream(...)`` leaves closing to the caller;
    ``async with svc.open_stream(...) as stream:`` closes it on a clean exit
    and resets it on an error or cancellation.
    """

    def __init__(self, opener: Callable[[], Awaitable[Stream]]) -> None:
        self._opener = opener
        self._stream: Stream | None = None

    def __await__(self) -> Generator[object, None, Stream]:
        return self._opener().__await__()

    async def __aenter__(self) -> Stream:
        self._stream = await self._opener()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stream is not None
        await self._stream.__aexit__(exc_type, exc, tb)
