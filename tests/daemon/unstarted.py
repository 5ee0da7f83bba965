"""A node's services built from its home's config, none of them started: for tests of the lifecycle.

Built with the same ``peerd.daemon.wiring`` builders as the composition root (``peerd.daemon.node``); the store is a
real SQLite file in the home. The host is a fixed one (no docker or NVML probe), as the p2p service and
the executor are never started.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from peerd.config import load
from peerd.daemon.lifecycle import Lifecycle, RunState
from peerd.daemon.metrics import Metrics
from peerd.daemon.services import ProviderServices, Services
from peerd.daemon.wiring import executor_from, p2p_from, provider_settings_from, pruner_from
from peerd.executor.gpus import CapacityLedger
from peerd.host.identity import load_key
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.provider import Provider
from peerd.jobs.tracking import TaskTracker
from peerd.market.adverts import HostFacts
from peerd.state.store import Store
from protocol.roles import NodeRole

HOST = HostFacts(cpus=4.0, memory=8 << 30, disk_free=1 << 40, docker=True, gpu_runtime=False, gpus=())


@asynccontextmanager
async def unstarted_lifecycle(home: Path, *, provider: bool) -> AsyncIterator[Lifecycle]:
    """The lifecycle of a requester (or, with ``provider``, a provider) node whose services are not running."""
    config = load(home)
    signer = load_key(config.key_path)
    async with Store.open(config.db_path) as store:
        ours = None
        if provider:
            executor = executor_from(config, signer.peer_id)
            ledger = CapacityLedger(cpus=HOST.cpus, memory=HOST.memory)
            runner = JobRunner(signer=signer, executor=executor, ledger=ledger, store=store,
                               pids=config.limits.pids, log_limit=config.limits.log_limit)
            settings = provider_settings_from(config)
            ours = ProviderServices(host=HOST, executor=executor, ledger=ledger, runner=runner,
                                    provider=Provider(signer=signer, ledger=ledger, runner=runner, settings=settings))
        services = Services(
            role=NodeRole.PROVIDER if provider else NodeRole.REQUESTER, signer=signer, clock=time.time, store=store,
            p2p=p2p_from(config, signer, seed=False, advert_source=None), tracker=TaskTracker(), metrics=Metrics(),
            pruner=pruner_from(config, store, active=frozenset), requester=None, provider=ours,
        )
        yield Lifecycle(RunState(config), services)
