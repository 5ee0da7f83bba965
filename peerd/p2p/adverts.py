"""Our own advert on the gossip topic, and every received one into the peer table.

Out: ``AdvertPublisher`` stamps the advert from ``advert_source(now)`` with our
peer ID, a sequence number that survives restarts (``max(last + 1,
int(now * 100))``), ``issued_at``/``expires_at`` (``advert_ttl``) and, unless
the source set them, our listen addresses; it seals and publishes it on start,
when our gossip mesh gains its first peer, on ``changed()`` (at most one per
``MIN_GAP`` seconds; changes in between are coalesced) and every
``advert_interval`` as a refresh. A publication that fails (the advert cannot
be built, or pubsub refuses it) backs off: the gap doubles per failure in a
row, up to ``advert_interval``, so a lasting fault never spins. Adverts are small (the table drops > 8 KiB).

In: ``gossip_validator`` is the topic validator pubsub calls for every message
before relaying it: the data goes through ``PeerTable.ingest`` with the
message's signed origin as ``source``, so a forged, replayed or mis-bound
advert is counted and neither stored nor relayed. A validator exception would
reach the host, so none escapes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import ClassVar

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from peerd.config import NetworkConfig
from peerd.market.peertable import RELAYABLE, PeerEntry, PeerTable
from peerd.p2p.host import Libp2pNode
from peerd.p2p.streams import FOREIGN_ERRORS
from protocol.errors import ProtocolError
from protocol.messages import Advert
from protocol.signing import Signer, seal_bytes

log = logging.getLogger(__name__)

ADVERT_TOPIC = "peerd/adverts/1"
MIN_GAP = 1.0  # seconds between two publications
# After n failed publications in a row the next waits MIN_GAP * 2**n, at most advert_interval.
MAX_BACKOFF_DOUBLINGS = 16
TOPIC_POLL = 0.25  # how often to look for the topic's first peer
MAX_ADDRS = 16

AdvertSource = Callable[[float], Advert]
Clock = Callable[[], float]
AcceptHook = Callable[[PeerEntry], None]


SEQ_PER_SECOND = 100  # seq follows the clock in centiseconds (fits Advert's 2**40 cap)


def next_seq(last: int, now: float) -> int:
    """Higher than ``last`` and than any seq a previous run issued before ``now``.

    A previous run that published at most SEQ_PER_SECOND adverts a second
    (we publish at most one) never got ahead of the clock, so a restart with
    the same key continues above it without persisting anything.
    """
    return max(last + 1, int(now * SEQ_PER_SECOND))


def gossip_validator(
    table: PeerTable, clock: Clock, on_accept: AcceptHook | None
) -> Callable[[ID, rpc_pb2.Message], bool]:
    """The pubsub topic validator: ingest, and relay only what the table accepts."""

    def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        try:
            source = ID(msg.from_id).to_base58()
            outcome, entry = table.admit(bytes(msg.data), source=source, now=clock())
        except Exception:  # edge: an exception here would travel into the pubsub loop
            log.exception("advert validator failed on a message from …%s", str(forwarder)[-8:])
            return False
        if entry is not None:
            notify_accept(on_accept, entry)
        return outcome in RELAYABLE

    return validate


def notify_accept(hook: AcceptHook | None, entry: PeerEntry) -> None:
    """Tell the owner's hook about a new advert; its failure is logged, not raised."""
    if hook is None:
        return
    try:
        hook(entry)
    except Exception:  # edge: the hook is foreign code called from the network's tasks
        log.exception("on_advert hook failed for the advert of …%s", entry.peer_id[-8:])


class AdvertPublisher:
    """Builds, signs and publishes this node's advert, paced."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("published", "publish_failed")

    def __init__(
        self,
        node: Libp2pNode,
        signer: Signer,
        net: NetworkConfig,
        source: AdvertSource,
        addrs: Callable[[], list[str]],
        clock: Clock,
    ) -> None:
        self._node = node
        self._signer = signer
        self._net = net
        self._source = source
        self._addrs = addrs
        self._clock = clock
        self._wake = trio.Event()
        self._last_publish = -math.inf  # when the last publication was tried (failed or not)
        self._failures = 0  # failed publications in a row
        self._stamped = 0  # adverts built so far
        self._finished = 0  # the last of them whose publication is over (sent or failed)
        self._progress = trio.Event()
        self.seq = 0
        self.current: bytes | None = None  # the latest sealed envelope
        self.advert: Advert | None = None
        self.counters = dict.fromkeys(self.COUNTERS, 0)

    def stamp(self) -> bytes:
        """Build and seal a fresh advert; it becomes ``current``."""
        now = self._clock()
        base = self._source(now)
        self.seq = next_seq(max(self.seq, base.seq), now)
        addrs = base.addrs or tuple(self._addrs()[:MAX_ADDRS])
        advert = dataclasses.replace(
            base,
            peer_id=self._signer.peer_id,
            seq=self.seq,
            issued_at=now,
            expires_at=now + self._net.advert_ttl,
            addrs=addrs,
        )
        self.advert = advert
        self.current = seal_bytes(advert, self._signer)
        self._stamped += 1
        return self.current

    def changed(self) -> None:
        """Ask for a prompt re-publish (coalesced, at most one per MIN_GAP)."""
        self._wake.set()

    async def flush(self) -> bool:
        """Re-publish (paced) and wait until an advert built after this call went out.

        False if that publication failed.
        """
        wanted = self._stamped + 1
        failed_before = self.counters["publish_failed"]
        self.changed()
        while self._finished < wanted:
            await self._progress.wait()
        return self.counters["publish_failed"] == failed_before

    async def publish_now(self) -> None:
        try:
            await self._publish()
        finally:
            self._finished = self._stamped
            self._progress.set()
            self._progress = trio.Event()

    async def _publish(self) -> None:
        self._last_publish = trio.current_time()  # a failed try paces the next one too
        try:
            data = self.stamp()
        except ProtocolError as exc:
            self._failed()
            log.error("cannot build our advert (next try in %gs): %s", self.gap(), exc)
            return
        try:
            with trio.fail_after(self._net.io_timeout):
                await self._node.pubsub.publish(ADVERT_TOPIC, data)
        except (trio.TooSlowError, *FOREIGN_ERRORS) as exc:
            self._failed()
            log.warning("publishing our advert failed (next try in %gs): %r", self.gap(), exc)
            return
        self._failures = 0
        self.counters["published"] += 1

    def _failed(self) -> None:
        self.counters["publish_failed"] += 1
        self._failures += 1

    def gap(self) -> float:
        """The least time from one publication to the next: MIN_GAP, doubled per failure in a row."""
        if not self._failures:
            return MIN_GAP
        backoff = MIN_GAP * 2.0 ** min(self._failures, MAX_BACKOFF_DOUBLINGS)
        return max(MIN_GAP, min(backoff, self._net.advert_interval))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.publish_now()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_topic)
            while True:
                with trio.move_on_at(self._last_publish + self._net.advert_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep_until(self._last_publish + self.gap())
                await self.publish_now()

    def mesh_peers(self) -> int:
        return len(self._node.gossipsub.mesh.get(ADVERT_TOPIC, ()))

    async def _watch_topic(self) -> None:
        """Re-publish when our gossip mesh goes from empty to not (start, seeds back).

        A subscribed node publishes to its mesh peers only, so whatever was
        published while the mesh was empty reached nobody.
        """
        had = self.mesh_peers() > 0
        while True:
            await trio.sleep(TOPIC_POLL)
            has = self.mesh_peers() > 0
            if has and not had:
                self.changed()
            had = has
