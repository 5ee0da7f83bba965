"""Direct advert sync: over every connection we dial, fetch the peer's view of the network.

Gossip only carries adverts published while we listen, and a new subscriber
is replayed just the last few seconds of messages; adverts refresh every
``advert_interval`` (a minute by default). So when we open a connection to
a peer, we ask it over ``/peerd/adverts-sync/1.0.0`` for its own advert and
the freshest entries of its table, as length-prefixed frames
(``protocol.codec.frame``) followed by EOF. Each goes through
``PeerTable.ingest`` with no gossip source: the envelope's own signature, the
advert's peer ID binding, freshness and seq still apply. At most
``SYNC_LIMIT`` adverts are taken from one answer; any excess bytes are a
protocol violation and end the fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

import trio

from peerd.config import NetworkConfig
from peerd.market.peertable import MAX_ADVERT_SIZE, PeerTable
from peerd.p2p.adverts import AcceptHook, Clock, notify_accept
from peerd.p2p.dialing import open_raw_stream
from peerd.p2p.errors import StreamError
from peerd.p2p.host import Libp2pNode
from peerd.p2p.streams import Stream, short
from protocol.codec import FrameDecoder, frame
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

SYNC_PROTOCOL = "/peerd/adverts-sync/1.0.0"
SYNC_LIMIT = 512
PARALLEL_FETCHES = 4


class AdvertSync:
    """Serves our view to peers and fetches theirs once per connection we dial."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("sync_served", "sync_fetched", "sync_failed", "sync_adverts")

    def __init__(
        self,
        node: Libp2pNode,
        table: PeerTable,
        own: Callable[[], bytes | None],
        net: NetworkConfig,
        clock: Clock,
        on_accept: AcceptHook | None,
    ) -> None:
        self._node = node
        self._table = table
        self._own = own
        self._net = net
        self._clock = clock
        self._on_accept = on_accept
        self._synced: set[str] = set()
        self._limiter = trio.CapacityLimiter(PARALLEL_FETCHES)
        self.counters = dict.fromkeys(self.COUNTERS, 0)

    async def serve(self, stream: Stream) -> None:
        """The handler of SYNC_PROTOCOL: our advert, then the table, then EOF."""
        own = self._own()
        # the asker's own advert is not sent back to it
        theirs = self._table.envelopes(self._clock(), SYNC_LIMIT - 1, exclude={stream.remote_peer})
        envelopes = ([own] if own else []) + theirs
        await stream.write(b"".join(frame(e) for e in envelopes))
        await stream.close_write()
        self.counters["sync_served"] += 1

    def forget(self, peer_id: str) -> None:
        """The connection to ``peer_id`` closed: sync again when it reopens."""
        self._synced.discard(peer_id)

    def wants(self, peer_id: str) -> bool:
        return peer_id not in self._synced

    def give_up(self, peer_id: str) -> None:
        """Stop trying ``peer_id`` until it reconnects (e.g. it does not speak sync)."""
        self._synced.add(peer_id)

    async def fetch(self, peer_id: str) -> bool:
        """Ingest ``peer_id``'s answer; False if the sync failed."""
        self._synced.add(peer_id)
        try:
            async with self._limiter:
                async with await open_raw_stream(
                    self._node,
                    peer_id,
                    SYNC_PROTOCOL,
                    timeout=self._net.connect_timeout,
                    io_timeout=self._net.io_timeout,
                ) as stream:
                    accepted = await self._receive(stream)
        except (StreamError, ProtocolError) as exc:
            self._synced.discard(peer_id)
            self.counters["sync_failed"] += 1
            log.debug("advert sync with …%s failed: %s", short(peer_id), exc)
            return False
        self.counters["sync_fetched"] += 1
        self.counters["sync_adverts"] += accepted
        return True

    async def _receive(self, stream: Stream) -> int:
        decoder = FrameDecoder(max_frame=MAX_ADVERT_SIZE)
        taken = accepted = 0
        while True:
            chunk = await stream.read()
            decoder.receive_data(chunk)
            while (payload := decoder.next_frame()) is not None:
                taken += 1
                if taken > SYNC_LIMIT:
                    raise StreamError(f"peer sent more than {SYNC_LIMIT} adverts")
                accepted += self._ingest(payload)
            if not chunk:
                return accepted

    def _ingest(self, payload: bytes) -> int:
        _, entry = self._table.admit(payload, source=None, now=self._clock())
        if entry is None:
            return 0
        notify_accept(self._on_accept, entry)
        return 1
