"""Real P2PService nodes in one process on 127.0.0.1, for integration tests.

``p2p_cluster()`` is an async context manager yielding a ``Cluster`` with one
seed started; ``cluster.start_node()`` adds provider nodes (each on
/ip4/127.0.0.1/tcp/0 with a fresh key unless one is given), ``node.stop()``
stops one, and ``cluster.wait_until(...)`` waits for a condition under a
deadline: it wakes on every accepted advert and otherwise re-checks every
``POLL`` seconds (expiry and connections raise no event). Leaving the context
cancels every node; each closes its host on the way out.

``raw_gossip_node()`` is a bare libp2p node (our host adapter, no peer table)
that can publish arbitrary bytes on the advert topic, for attack tests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from peerd.config import NetworkConfig
from peerd.market.peertable import PeerEntry
from peerd.p2p.adverts import ADVERT_TOPIC
from peerd.p2p.dialing import connect
from peerd.p2p.host import Libp2pNode, open_node
from peerd.p2p.service import P2PService
from protocol.messages import Advert, NodeRole
from protocol.signing import Signer
from tests.waiting import eventually

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
POLL = 0.05
GIB = 1 << 30
FAST_NET = NetworkConfig(advert_interval=30.0, advert_ttl=60.0, connect_timeout=5.0, io_timeout=5.0)


def provider_advert(**changes: object) -> Advert:
    """A plausible CPU-only provider advert; the service stamps id, seq, times, addrs."""
    base = Advert(
        peer_id="unset", seq=0, issued_at=0.0, expires_at=0.0, role=NodeRole.PROVIDER,
        addrs=(), version="test", cpus=4.0, memory=8 * GIB, disk=50 * GIB, gpus=(),
        free_cpus=4.0, free_memory=8 * GIB, free_gpus=(), queue_depth=0, running=0,
        price_cpu_hour=0.01, price_gpu_hour=0.5, docker=True, gpu_runtime=False,
        network=False, max_timeout=3600.0, draining=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class MutableAdvert:
    """An advert source whose fields a test can change (then call advert_changed)."""

    def __init__(self, **fields: object) -> None:
        self.advert = provider_advert(**fields)

    def update(self, **changes: object) -> None:
        self.advert = dataclasses.replace(self.advert, **changes)  # type: ignore[arg-type]

    def __call__(self, now: float) -> Advert:
        return self.advert


@dataclass
class Node:
    service: P2PService
    signer: Signer
    source: MutableAdvert | None
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


class Cluster:
    def __init__(self, nursery: trio.Nursery, net: NetworkConfig) -> None:
        self._nursery = nursery
        self.net = net
        self.nodes: list[Node] = []
        self.seed: Node | None = None
        self._changed = trio.Event()

    @property
    def seed_addrs(self) -> list[str]:
        assert self.seed is not None
        return self.seed.service.listen_addrs()

    def providers(self) -> list[Node]:
        return [n for n in self.nodes if n is not self.seed and not n.stopped.is_set()]

    def _on_advert(self, entry: PeerEntry) -> None:
        self._changed.set()

    async def start_seed(self, signer: Signer | None = None, listen: str = LOOPBACK) -> Node:
        self.seed = await self._start(signer or Signer.generate(), [listen], [], seed=True, source=None)
        return self.seed

    async def start_node(
        self,
        signer: Signer | None = None,
        *,
        bootstrap: Sequence[str] | None = None,
        source: MutableAdvert | None = None,
        listen: str = LOOPBACK,
        advertise: bool = True,
        on_advert: Callable[[PeerEntry], None] | None = None,
    ) -> Node:
        """A provider node (``advertise=False``: a node that publishes no advert)."""
        boot = self.seed_addrs if bootstrap is None else list(bootstrap)
        if advertise and source is None:
            source = MutableAdvert()
        return await self._start(signer or Signer.generate(), [listen], boot, seed=False,
                                 source=source if advertise else None, on_advert=on_advert)

    async def _start(
        self, signer: Signer, listen: list[str], bootstrap: list[str], *, seed: bool,
        source: MutableAdvert | None, on_advert: Callable[[PeerEntry], None] | None = None,
    ) -> Node:
        def hook(entry: PeerEntry) -> None:
            self._on_advert(entry)
            if on_advert is not None:
                on_advert(entry)

        service = P2PService(signer, listen, bootstrap, seed=seed, net=self.net,
                             advert_source=source, on_advert=hook)
        node = Node(service, signer, source, trio.CancelScope())

        async def runner(task_status: trio.TaskStatus[None]) -> None:
            try:
                with node.scope:
                    await service.run(task_status=task_status)
            finally:
                node.stopped.set()

        await self._nursery.start(runner)
        self.nodes.append(node)
        return node

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float, what: str) -> float:
        """Wait for ``condition``; return the seconds it took; fail after ``timeout``."""
        start = trio.current_time()
        try:
            with trio.fail_after(timeout):
                while not condition():
                    self._changed = trio.Event()
                    with trio.move_on_after(POLL):
                        await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"not within {timeout:g}s: {what}") from None
        return trio.current_time() - start

    def all_know_each_other(self) -> bool:
        """Every running provider holds every other running provider's advert."""
        live = self.providers()
        ids = {n.peer_id for n in live}
        now = self.now()
        return all(ids - {n.peer_id} <= n.service.table.peer_ids(now) for n in live)

    @staticmethod
    def now() -> float:
        return time.time()


@asynccontextmanager
async def p2p_cluster(net: NetworkConfig = FAST_NET, *, with_seed: bool = True) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, net)
        if with_seed:
            await cluster.start_seed()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_gossip_node(
    signer: Signer, peer_addrs: Sequence[str], *, timeout: float = 10.0
) -> AsyncIterator[Libp2pNode]:
    """A bare node subscribed to the advert topic and connected to ``peer_addrs``.

    It has no topic validator: whatever it publishes goes out as it is.
    Returns once every peer is in its gossip mesh for the topic.
    """
    async with open_node(signer, [LOOPBACK], topics=frozenset({ADVERT_TOPIC})) as node:
        await node.pubsub.subscribe(ADVERT_TOPIC)
        peers = []
        for addr in peer_addrs:
            peer_id = addr.rsplit("/p2p/", 1)[1]
            await connect(node, peer_id, [addr], timeout=timeout)
            peers.append(peer_id)
        await eventually("every peer in the gossip mesh",
                         lambda: set(peers) <= {str(p) for p in node.gossipsub.mesh.get(ADVERT_TOPIC, ())},
                         timeout=timeout, interval=POLL)
        yield node
