"""The daemon's composition root: builds every service once, in order, in the root nursery.

Start-up order: store → executor (provider role; recovers its containers) →
job runner (re-attaches leased jobs) → retention pruner → p2p (joins through the seeds, then
publishes adverts) → inventory watch (provider: GPUs and GPU runtime read again every minute) →
requester (resumes unfinished tasks) → signal handling →
control socket → metrics endpoint (if ``metrics.listen``) → dashboard (if
``dashboard.listen``) → watchdog → READY=1.

The started services are one frozen ``services.Services``; signals, drain, stop
and reload are ``lifecycle``'s, the control socket's operations
``operations``'. The node takes its wall clock (``clock``: signed timestamps,
adverts, views) by injection and passes it to every service that stamps time;
deadlines are on trio's clock.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import trio

from peerd.config import Config
from peerd.control.server import ControlServer
from peerd.daemon.inventory import InventoryWatch
from peerd.daemon.lifecycle import Lifecycle, RunState
from peerd.daemon.metrics import Metrics, MetricsServer, listen_address
from peerd.daemon.operations import Operations
from peerd.daemon.services import Clock, ProviderServices, Services
from peerd.daemon.wiring import (
    data_settings_from,
    executor_from,
    image_settings_from,
    p2p_from,
    provider_settings_from,
    pruner_from,
    requester_settings_from,
)
from peerd.dashboard import DashboardServer, dashboard_address
from peerd.data.blobstore import ChunkStore
from peerd.data.imagereceive import ProviderImages
from peerd.data.jobdata import ProviderData
from peerd.data.nodedata import BlobDialer, open_chunks, start_job_data
from peerd.errors import PeerdError
from peerd.executor.gpus import CapacityLedger
from peerd.host import sdnotify
from peerd.host.identity import load_key
from peerd.host.nvml import read_gpus
from peerd.host.resources import snapshot
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.provider import Provider
from peerd.jobs.requester import Requester
from peerd.jobs.routes import Routes, task_stream_handler
from peerd.jobs.tracking import TaskTracker
from peerd.market.adverts import HostFacts, offered_capacity, offered_gpus
from peerd.market.reputation_book import ReputationBook
from peerd.p2p.adverts import AdvertSource
from peerd.state.store import Store
from protocol.messages import Advert
from protocol.negotiation import TASK_PROTOCOL
from protocol.roles import NodeRole

log = logging.getLogger(__name__)


class Node:
    """A node to run: ``await nursery.start(node.run)`` gives its started ``Services``."""

    def __init__(self, config: Config, *, seed: bool = False, clock: Clock = time.time) -> None:
        self.seed = seed or config.node.role is NodeRole.SEED
        self.clock = clock
        self.metrics_address = listen_address(config.metrics.listen)  # refuses non-loopback up front
        self.dashboard_address = dashboard_address(config.dashboard.listen)  # the same rule
        self.signer = load_key(config.key_path)
        self.state = RunState(config)
        self.ready = trio.Event()

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def role(self) -> NodeRole:
        return NodeRole.SEED if self.seed else self.config.node.role

    async def run(self, *, task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.home.mkdir(parents=True, exist_ok=True)
        async with Store.open(config.db_path) as store, open_chunks(config) as chunks, \
                trio.open_nursery() as nursery:
            services = await self._start_services(nursery, store, chunks)
            lifecycle = Lifecycle(self.state, services)
            ops = Operations(services, self.state, lifecycle, nursery)
            await nursery.start(lifecycle.signals, nursery)
            await nursery.start(ControlServer(config.control_path, ops).run)
            if self.metrics_address is not None:
                await nursery.start(MetricsServer(services.metrics, ops.sample, self.metrics_address).run)
            if self.dashboard_address is not None:
                await nursery.start(DashboardServer(ops, self.dashboard_address).run)
            await nursery.start(sdnotify.Watchdog(status=lifecycle.status_line).run)
            sdnotify.notify("READY=1\nSTATUS=" + lifecycle.status_line())
            self.ready.set()
            task_status.started(services)

    async def _start_services(self, nursery: trio.Nursery, store: Store, chunks: ChunkStore) -> Services:
        """Provider services, pruner, p2p (returns once joined), the task protocol, job data, then the requester."""
        config, signer, metrics, dialer = self.config, self.signer, Metrics(), BlobDialer()
        is_provider = self.role is NodeRole.PROVIDER
        ours = await self._start_provider(nursery, store, metrics, chunks, dialer) if is_provider else None
        pruner = pruner_from(config, store, active=lambda: ours.runner.jobs.keys() if ours else ())
        await nursery.start(pruner.run)

        # The advert names p2p's addresses; p2p asks for adverts only once it runs, when ``p2p`` is bound.
        source = self._advert_source(ours, lambda: p2p.listen_addrs()) if ours else None
        p2p = p2p_from(config, signer, seed=self.seed, advert_source=source, clock=self.clock)
        await nursery.start(p2p.run)
        if ours is not None:
            ours.executor.on_gpu_change = p2p.advert_changed  # a GPU runtime that failed a start leaves the advert
            watch = InventoryWatch(
                ours.ledger, read_gpus, lambda gpus: offered_gpus(self.config, gpus),
                ours.executor.refresh_gpu_support, p2p.advert_changed,
            )
            await nursery.start(watch.run, ours.executor.gpu_runtime)
            p2p.set_stream_handler(TASK_PROTOCOL, task_stream_handler(ours.provider, self.state.task_streams))
            ours.runner.on_change = p2p.advert_changed  # free capacity reaches requesters as it changes
        data = await start_job_data(
            nursery, config, chunks, store, p2p, dialer, clock=self.clock,
            active=lambda: ours.runner.jobs.keys() if ours else (), with_requester=not self.seed,
            provider=ours.runner.data if ours else None, provider_images=ours.runner.images if ours else None,
            executor=ours.executor if ours else None,
        )
        tracker, requester, reputation = TaskTracker(), None, None
        if not self.seed:
            reputation = ReputationBook(store)
            await reputation.refresh()  # the whole history: reputation survives a restart
            routes = Routes(signer.peer_id, p2p, ours.provider if ours else None, reputation)
            requester = Requester(
                signer=signer, store=store, tracker=tracker,
                candidates=routes.candidates, open_stream=routes.open_stream, all_providers=routes.providers,
                could_run=routes.could_run,
                peers_changed=p2p.wait_advert, inputs=data.requester,
                on_negotiated=metrics.observe_negotiation, on_settled=reputation.refresh,
                settings=requester_settings_from(config), clock=self.clock,
            )
            await nursery.start(requester.run)
            if data.requester is not None:  # input pins a crash left behind go once their task is final
                nursery.start_soon(data.requester.recover, tracker)
            if data.images is not None:  # exports a crash left pinned: no live task is known to carry them
                await data.images.recover()
        return Services(
            role=self.role, signer=signer, clock=self.clock, store=store, p2p=p2p, tracker=tracker,
            metrics=metrics, pruner=pruner, requester=requester, provider=ours, data=data, reputation=reputation,
        )

    def _advert_source(self, ours: ProviderServices, addrs: Callable[[], list[str]]) -> AdvertSource:
        """Our advert now: the live config (SIGHUP may change prices and policy), draining or not."""

        def advert(now: float) -> Advert:
            return ours.advert(self.config, self.signer.peer_id, addrs(), now, draining=self.state.draining)

        return advert

    async def _start_provider(
        self, nursery: trio.Nursery, store: Store, metrics: Metrics, chunks: ChunkStore, dialer: BlobDialer,
    ) -> ProviderServices:
        config, signer = self.config, self.signer
        inventory = await snapshot(docker_url=config.resources.docker_url or None, home=config.home)
        host = HostFacts(
            cpus=float(inventory.cpus), memory=inventory.memory, disk_free=inventory.disk_free,
            docker=inventory.docker, gpu_runtime=inventory.nvidia_runtime, gpus=tuple(inventory.gpus),
        )
        cpus, memory = offered_capacity(config, host)
        executor = executor_from(config, signer.peer_id, store=chunks)
        await nursery.start(executor.run)
        ledger = CapacityLedger(cpus=cpus, memory=memory, gpus=offered_gpus(config, host.gpus))
        runner = JobRunner(
            signer=signer, executor=executor, ledger=ledger, store=store,
            pids=config.limits.pids, log_limit=config.limits.log_limit,
            on_overhead=metrics.observe_executor_overhead, clock=self.clock,
            data=ProviderData(chunks, dialer, data_settings_from(config), clock=self.clock),
            images=ProviderImages(lambda: executor.engine, chunks, dialer, image_settings_from(config),
                                  clock=self.clock),
        )
        await nursery.start(runner.run)
        provider = Provider(
            signer=signer, ledger=ledger, runner=runner,
            settings=provider_settings_from(config), clock=self.clock,
        )
        return ProviderServices(host=host, executor=executor, ledger=ledger, runner=runner, provider=provider)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_daemon(config: Config, *, seed: bool = False) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; the exit status."""
    setup_logging(config.node.log_level)

    async def main() -> None:
        node = Node(config, seed=seed)
        async with trio.open_nursery() as nursery:
            services = await nursery.start(node.run)
            for addr in services.p2p.listen_addrs():
                print(addr, flush=True)

    try:
        trio.run(main)
    except PeerdError as exc:
        log.error("%s", exc)
        print(f"peerd: {exc}", file=sys.stderr)
        return 1
    return 0
