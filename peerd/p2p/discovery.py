"""Finding peers: join through the seeds, fill the Kad-DHT routing table, connect.

``join`` dials every seed (each under the connect timeout), adds it to the
DHT routing table and refreshes the table (a FIND_NODE lookup for our own ID
and a random key per bucket), then dials the peers it learned, up to
``target_peers`` connections. ``run`` keeps that up: seeds that are down are
re-dialled with exponential backoff (the swarm's negative dial cache is
cleared first), the routing table is refreshed explicitly (py-libp2p's own
refresh runs every 600 s and connections never fill it: defect 9 in
docs/py-libp2p.md), and peers learned from the DHT or from adverts' addresses
are dialled while we hold fewer than ``target_peers`` connections. Nothing here disconnects anyone, so
a node whose seeds all go away keeps the peers it has.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import trio

from peerd.config import NetworkConfig
from peerd.p2p.dialing import connect, is_connected, split_p2p, to_id
from peerd.p2p.errors import BadAddress, DialError
from peerd.p2p.host import Libp2pNode
from peerd.p2p.streams import FOREIGN_ERRORS, short

log = logging.getLogger(__name__)

TICK = 2.0
FAST_REFRESH = 10.0  # routing-table refresh period while young and short of peers
SLOW_REFRESH = 120.0
FAST_PHASE = 120.0
SEED_BACKOFF_START = 1.0
SEED_BACKOFF_MAX = 60.0
PEER_RETRY_AFTER = 30.0  # a non-seed peer that failed a dial is left alone this long
PARALLEL_DIALS = 4
TARGET_PEERS = 6  # dial until this many connections (inbound ones add more)


@dataclass
class Seed:
    peer_id: str
    addrs: list[str]
    backoff: float = SEED_BACKOFF_START
    next_try: float = 0.0


@dataclass
class Candidate:
    peer_id: str
    addrs: list[str] = field(default_factory=list)


def parse_seeds(addrs: Sequence[str], self_id: str) -> list[Seed]:
    """Group seed multiaddrs by peer ID; each must end in /p2p/<id>; we skip ourselves."""
    seeds: dict[str, Seed] = {}
    for addr in addrs:
        _, peer_id = split_p2p(addr)
        if peer_id is None:
            raise BadAddress(f"bootstrap address {addr!r} must end with /p2p/<peer id>")
        to_id(peer_id)
        if peer_id != self_id:
            seeds.setdefault(peer_id, Seed(peer_id, [])).addrs.append(addr)
    return list(seeds.values())


class Discovery:
    """Keeps this node joined to the network."""

    COUNTERS: ClassVar[tuple[str, ...]] = ("dials", "dials_failed", "seed_dials_failed", "dht_refreshes")

    def __init__(
        self,
        node: Libp2pNode,
        seeds: list[Seed],
        net: NetworkConfig,
        advertised: Callable[[], list[Candidate]],
        *,
        target_peers: int = TARGET_PEERS,
    ) -> None:
        self._node = node
        self.seeds = seeds
        self._net = net
        self._advertised = advertised
        self._target = target_peers
        self._failed: dict[str, float] = {}  # peer -> monotonic time it may be retried
        self._started = trio.current_time()
        self.counters = dict.fromkeys(self.COUNTERS, 0)

    # ------------------------------------------------------------ seeds
    def seeds_connected(self) -> int:
        return sum(is_connected(self._node, s.peer_id) for s in self.seeds)

    async def join(self) -> int:
        """Dial every seed once; when any answered, fill the routing table and connect."""
        async with trio.open_nursery() as nursery:
            for seed in self.seeds:
                nursery.start_soon(self._dial_seed, seed)
        joined = self.seeds_connected()
        if joined:
            await self.refresh()
        return joined

    async def _dial_seed(self, seed: Seed) -> bool:
        try:
            await connect(self._node, seed.peer_id, seed.addrs, timeout=self._net.connect_timeout, redial=True)
        except DialError as exc:
            self.counters["seed_dials_failed"] += 1
            seed.next_try = trio.current_time() + seed.backoff
            log.info("seed …%s unreachable (retry in %.0fs): %s", short(seed.peer_id), seed.backoff, exc)
            seed.backoff = min(seed.backoff * 2, SEED_BACKOFF_MAX)
            return False
        seed.backoff = SEED_BACKOFF_START
        await self._add_to_routing_table(seed.peer_id)
        return True

    async def _redial_seeds(self) -> bool:
        """Re-dial the seeds that are due; True if one came back."""
        now = trio.current_time()
        due = [s for s in self.seeds if s.next_try <= now and not is_connected(self._node, s.peer_id)]
        results: list[bool] = []

        async def dial(seed: Seed) -> None:
            results.append(await self._dial_seed(seed))

        async with trio.open_nursery() as nursery:
            for seed in due:
                nursery.start_soon(dial, seed)
        return any(results)

    # ------------------------------------------------------------ DHT
    async def _add_to_routing_table(self, peer_id: str) -> None:
        try:
            await self._node.dht.add_peer(to_id(peer_id))
        except FOREIGN_ERRORS as exc:
            log.debug("cannot add …%s to the routing table: %r", short(peer_id), exc)

    def routing_peers(self) -> list[str]:
        return [str(p) for p in self._node.dht.routing_table.get_peer_ids()]

    async def refresh(self) -> None:
        """Refresh the routing table (bounded), then connect to what it found."""
        self.counters["dht_refreshes"] += 1
        with trio.move_on_after(self._net.connect_timeout * 2):
            try:
                await self._node.dht.refresh_routing_table()
            except FOREIGN_ERRORS as exc:
                log.info("routing table refresh failed: %r", exc)
        await self.connect_more()

    # ------------------------------------------------------------ peers
    def _candidates(self) -> list[Candidate]:
        self_id = self._node.peer_id
        now = trio.current_time()
        found = {pid: Candidate(pid) for pid in self.routing_peers()}
        for cand in self._advertised():
            found.setdefault(cand.peer_id, Candidate(cand.peer_id)).addrs.extend(cand.addrs)
        out = [
            c
            for c in found.values()
            if c.peer_id != self_id
            and self._failed.get(c.peer_id, 0.0) <= now
            and not is_connected(self._node, c.peer_id)
        ]
        random.shuffle(out)
        return out

    async def connect_more(self) -> None:
        """Dial learned peers while we hold fewer than ``target_peers`` connections."""
        room = self._target - len(self._node.host.get_connected_peers())
        if room <= 0:
            return
        chosen = self._candidates()[:room]
        limiter = trio.CapacityLimiter(PARALLEL_DIALS)
        async with trio.open_nursery() as nursery:
            for cand in chosen:
                nursery.start_soon(self._dial_peer, cand, limiter)

    async def _dial_peer(self, cand: Candidate, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            self.counters["dials"] += 1
            try:
                await connect(self._node, cand.peer_id, cand.addrs, timeout=self._net.connect_timeout)
            except (DialError, BadAddress) as exc:
                self.counters["dials_failed"] += 1
                self._failed[cand.peer_id] = trio.current_time() + PEER_RETRY_AFTER
                log.debug("dial to …%s failed: %s", short(cand.peer_id), exc)
                return
        self._failed.pop(cand.peer_id, None)
        await self._add_to_routing_table(cand.peer_id)

    # ------------------------------------------------------------ loop
    def _refresh_period(self) -> float:
        """Refresh often while young and short of peers; a lookup costs every peer CPU."""
        young = trio.current_time() - self._started < FAST_PHASE
        short_of_peers = len(self._node.host.get_connected_peers()) < self._target
        return FAST_REFRESH if young and short_of_peers else SLOW_REFRESH

    async def run(self) -> None:
        next_refresh = trio.current_time() + self._refresh_period()
        while True:
            await trio.sleep(TICK)
            seed_back = await self._redial_seeds()
            if seed_back or trio.current_time() >= next_refresh:
                await self.refresh()
                next_refresh = trio.current_time() + self._refresh_period()
            else:
                await self.connect_more()
