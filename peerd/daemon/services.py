"""The node's running services, built once by the composition root (``peerd.daemon.node``).

``Services`` is frozen: what a node runs is decided when it starts and never
changes after. What every role runs is typed non-optional; what only some
roles run is ``None`` elsewhere, one check for the whole group: the provider's
services (``ProviderServices``) on a provider, the requester on any node but a
seed. Lifecycle (``peerd.daemon.lifecycle``) and the control socket's operations
(``peerd.daemon.operations``) work over these objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from peerd.config import Config
from peerd.daemon.metrics import Metrics
from peerd.data.nodedata import JobData
from peerd.executor.docker import DockerExecutor
from peerd.executor.gpus import CapacityLedger
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.provider import Provider
from peerd.jobs.requester import Requester
from peerd.jobs.tracking import TaskTracker
from peerd.market.adverts import HostFacts, build_advert
from peerd.market.reputation_book import ReputationBook
from peerd.p2p.service import P2PService
from peerd.state.retention import Pruner
from peerd.state.store import Store
from protocol.messages import Advert
from protocol.roles import NodeRole
from protocol.signing import Signer

Clock = Callable[[], float]  # wall clock (unix seconds): signed timestamps, adverts, views


@dataclass(frozen=True, slots=True)
class ProviderServices:
    """What a provider runs besides what every node runs: the host it offers and the jobs on it."""

    host: HostFacts
    executor: DockerExecutor
    ledger: CapacityLedger
    runner: JobRunner
    provider: Provider

    def advert(self, config: Config, peer_id: str, addrs: list[str], now: float, *, draining: bool) -> Advert:
        """Our resources now; the p2p publisher stamps seq, times and signature. ``queue_depth``: the
        requesters lately turned away here for capacity (``peerd.jobs.fairshare``)."""
        host = replace(self.host, gpu_runtime=self.executor.gpu_runtime)  # live: a failed GPU start takes it back
        return build_advert(
            config=config, host=host, ledger=self.ledger, peer_id=peer_id, addrs=addrs, now=now,
            seq=0, queue_depth=self.provider.fair.depth(now), running=len(self.runner.jobs), draining=draining,
        )


@dataclass(frozen=True, slots=True)
class Services:
    """Every service of a started node."""

    role: NodeRole
    signer: Signer
    clock: Clock
    store: Store
    p2p: P2PService
    tracker: TaskTracker
    metrics: Metrics
    pruner: Pruner
    requester: Requester | None  # None on a seed: it takes no jobs
    provider: ProviderServices | None  # the provider role only
    data: JobData | None = None  # job data: chunk store, blob protocol, output retention (peerd.data.nodedata)
    reputation: ReputationBook | None = None  # the requester's view of providers (None on a seed)

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    def running(self) -> int:
        """Provider jobs holding a lease now (0 on a node that runs none)."""
        return len(self.provider.runner.jobs) if self.provider else 0
