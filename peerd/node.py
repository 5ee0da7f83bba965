"""The daemon: owns the root nursery and starts every service in order.

Start-up order: store → executor (provider role; recovers its containers) →
job runner (re-attaches leased jobs) → retention pruner → p2p (joins through the seeds, then
publishes adverts) → requester (resumes unfinished tasks) → signal handling →
control socket → metrics endpoint (if ``metrics.listen``) → watchdog → READY=1.

Stopping (SIGTERM or SIGINT): a draining advert goes out, new requests are
rejected with ``draining``, running jobs get ``limits.drain_grace`` to finish
(a second signal cuts the grace short), the rest are stopped and reported
``interrupted``; the p2p service stays up until the task streams have delivered
their results and taken the co-signed receipts, then every service stops, the
store closes and the daemon exits 0. Every step is bounded and the whole drain
by one budget (``drainplan``). ``peerd drain`` does the first two steps
only. SIGHUP re-reads ``[policy]`` and ``[pricing]`` (other sections need a
restart).

``Node`` implements the control socket's ``NodeOps``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from functools import partial

import trio

from protocol.messages import FINAL_STATES, Advert, JobSpec, TaskState

from . import __version__, sdnotify
from .adverts import HostFacts, build_advert, offered_capacity, offered_gpus
from .config import Config, load
from .control.ops import (
    CancelView,
    ConfigReloadView,
    DoctorCheck,
    DrainView,
    EventView,
    LogChunkView,
    PeerView,
    ReceiptView,
    StatusView,
    TaskNotFound,
    TaskView,
)
from .control.server import ControlServer
from .drainplan import drain_budget
from .errors import PeerdError
from .executor.docker import DockerExecutor
from .executor.gpus import CapacityLedger
from .identity import load_key
from .jobrun import JobRunner
from .metrics import Metrics, MetricsServer, NodeSample, gpu_leases, listen_address, status_counters
from .p2p.service import P2PService
from .p2p.streams import Stream
from .provider import Provider
from .requester import TASK_PROTOCOL, Candidate, Requester
from .resources import snapshot
from .store import Store, TaskRole
from .taskwire import ByteStream
from .tracking import LogGap, TaskTracker
from .views import peer_view, receipt_view, task_view
from .wiring import (
    executor_from,
    p2p_from,
    policy_from,
    provider_settings_from,
    pruner_from,
    requester_settings_from,
)

log = logging.getLogger(__name__)

RELOADABLE = ("policy", "pricing")  # config sections SIGHUP applies; the rest needs a restart
INTERRUPT_REASON = "the provider is shutting down"


class InFlight:
    """How many of something are in progress, and a wait until none is."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Node:
    def __init__(self, config: Config, *, seed: bool = False) -> None:
        self.config = config
        self.seed = seed or config.node.role == "seed"
        self.metrics_address = listen_address(config.metrics.listen)  # refuses non-loopback up front
        self.signer = load_key(config.key_path)
        self.tracker = TaskTracker()
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.store: Store | None = None
        self.p2p: P2PService | None = None
        self.executor: DockerExecutor | None = None
        self.provider: Provider | None = None
        self.runner: JobRunner | None = None
        self.requester: Requester | None = None
        self.host: HostFacts | None = None
        self.ledger: CapacityLedger | None = None
        self.draining = False
        self.stopping = False
        self.config_reloads = 0
        self.config_reload_errors = 0
        self.last_reload: ConfigReloadView | None = None
        self.ready = trio.Event()
        self.task_streams = InFlight()  # provider task streams being served (drain waits for them)
        self._grace = trio.CancelScope()  # the drain's wait for running jobs; a second signal cancels it
        self._nursery: trio.Nursery | None = None

    @property
    def role(self) -> str:
        return "seed" if self.seed else self.config.node.role

    # ------------------------------------------------------------ services
    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.home.mkdir(parents=True, exist_ok=True)
        async with Store.open(config.db_path) as store, trio.open_nursery() as nursery:
            self.store, self._nursery = store, nursery
            if self.role == "provider":
                await self._start_provider(nursery, store)
            pruner = pruner_from(config, store, active=lambda: self.runner.jobs.keys() if self.runner else ())
            await nursery.start(pruner.run)
            await self._start_network(nursery, store)
            await nursery.start(self._signals, nursery)
            await nursery.start(ControlServer(config.control_path, self).run)
            if self.metrics_address is not None:
                self.metrics_server = MetricsServer(self.metrics, self.sample, self.metrics_address)
                await nursery.start(self.metrics_server.run)
            await nursery.start(sdnotify.Watchdog(status=self._status_line).run)
            sdnotify.notify("READY=1\nSTATUS=" + self._status_line())
            self.ready.set()
            task_status.started(self)

    async def _start_network(self, nursery: trio.Nursery, store: Store) -> None:
        """p2p (returns once joined), the task protocol, then the requester."""
        config = self.config
        self.p2p = p2p_from(config, self.signer, seed=self.seed,
                            advert_source=self._advert if self.role == "provider" else None)
        await nursery.start(self.p2p.run)
        if self.provider is not None:
            self.p2p.set_stream_handler(TASK_PROTOCOL, self._serve_task_stream)
        if not self.seed:
            self.requester = Requester(
                signer=self.signer, store=store, tracker=self.tracker,
                candidates=self._candidates, open_stream=self._open_task_stream, probe=self._providers,
                on_negotiated=self.metrics.observe_negotiation,
                settings=requester_settings_from(config),
            )
            await nursery.start(self.requester.run)

    async def _start_provider(self, nursery: trio.Nursery, store: Store) -> None:
        config = self.config
        inventory = await snapshot(docker_url=config.resources.docker_url or None, home=config.home)
        self.host = HostFacts(
            cpus=float(inventory.cpus), memory=inventory.memory, disk_free=inventory.disk_free,
            docker=inventory.docker, gpu_runtime=inventory.nvidia_runtime, gpus=tuple(inventory.gpus),
        )
        cpus, memory = offered_capacity(config, self.host)
        executor = executor_from(config, self.signer.peer_id)
        await nursery.start(executor.run)
        self.executor = executor
        self.ledger = CapacityLedger(cpus=cpus, memory=memory, gpus=offered_gpus(config, self.host.gpus))
        self.runner = JobRunner(
            signer=self.signer, executor=executor, ledger=self.ledger, store=store,
            pids=config.limits.pids, log_limit=config.limits.log_limit,
            on_overhead=self.metrics.observe_executor_overhead,
        )
        await nursery.start(self.runner.run)
        self.provider = Provider(
            signer=self.signer, ledger=self.ledger, runner=self.runner,
            settings=provider_settings_from(config, gpu_runtime=executor.gpu_runtime),
        )

    def _advert(self, now: float) -> Advert:
        """Our resources now; the p2p publisher stamps seq, times and signature."""
        assert self.host is not None and self.ledger is not None and self.p2p is not None
        running = len(self.runner.jobs) if self.runner else 0
        return build_advert(
            config=self.config, host=self.host, ledger=self.ledger, peer_id=self.signer.peer_id,
            addrs=self.p2p.listen_addrs(), now=now, seq=0, queue_depth=0,
            running=running, draining=self.draining,
        )

    async def _serve_task_stream(self, stream: Stream) -> None:
        assert self.provider is not None
        with self.task_streams.hold():
            await self.provider.handle_stream(stream, stream.remote_peer)

    def _candidates(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        assert self.p2p is not None
        if local:
            return [Candidate(peer_id=self.signer.peer_id, addrs=[])] if self.provider else []
        entries = self.p2p.table.candidates(spec, now, exclude={self.signer.peer_id})
        return [Candidate(peer_id=e.peer_id, addrs=list(e.addrs)) for e in entries]

    def _providers(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        """Every live provider but us (for asking when no advert fits the spec)."""
        assert self.p2p is not None
        if local:
            return []
        return [
            Candidate(peer_id=e.peer_id, addrs=list(e.addrs))
            for e in self.p2p.table.entries(now)
            if e.peer_id != self.signer.peer_id and e.advert.role.value == "provider" and not e.advert.draining
        ]

    @asynccontextmanager
    async def _open_task_stream(self, peer_id: str, addrs: list[str]) -> AsyncIterator[ByteStream]:
        assert self.p2p is not None
        if peer_id == self.signer.peer_id:
            async with self._local_stream() as stream:
                yield stream
            return
        async with self.p2p.open_stream(peer_id, TASK_PROTOCOL, addrs or None) as stream:
            yield stream

    @asynccontextmanager
    async def _local_stream(self) -> AsyncIterator[ByteStream]:
        """An in-process byte pipe to this node's own provider (``--local``)."""
        from .localpipe import pipe_pair

        assert self.provider is not None
        ours, theirs = pipe_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.provider.handle_stream, theirs, self.signer.peer_id)
            try:
                yield ours
            finally:
                await ours.close()

    def _status_line(self) -> str:
        peers = len(self.p2p.connected_peers()) if self.p2p else 0
        running = len(self.runner.jobs) if self.runner else 0
        return f"{peers} peers, {running} running tasks" + (", draining" if self.draining else "")

    # ------------------------------------------------------------ signals, drain, reload
    async def _signals(
        self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGHUP reloads; the first SIGTERM/SIGINT drains and stops; a second one cuts the grace short."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.reload()
                elif not self.stopping:
                    self.stopping = True
                    log.info("%s: draining, then stopping", name)
                    nursery.start_soon(self._stop, nursery)
                else:
                    log.warning("%s again: interrupting running jobs now", name)
                    self._grace.cancel()

    async def _stop(self, nursery: trio.Nursery) -> None:
        sdnotify.notify("STOPPING=1")
        await self._drain_and_stop()
        log.info("drained; stopping")
        nursery.cancel_scope.cancel()

    async def _drain_and_stop(self) -> None:
        """Drain, give running jobs their grace, interrupt the rest, let the streams report.

        Each step has its own bound and the whole drain one budget (``drain_budget``),
        so stopping never outlasts systemd's TimeoutStopSec (``stop_timeout``).
        """
        budget = drain_budget(self.config)
        announce = not self.draining  # after `peerd drain` the draining advert is already out
        await self.drain()
        with trio.move_on_after(budget.total) as whole:
            if self.runner is not None:
                self._grace.deadline = trio.current_time() + budget.grace
                with self._grace:
                    await self._jobs_finished()
                with trio.move_on_after(budget.interrupt):
                    await self._interrupt_jobs()
            with trio.move_on_after(budget.deliver):
                await self.task_streams.wait_idle()  # results sent, co-signed receipts taken
            if announce:
                await self._advert_flushed(budget.announce)
        if whole.cancelled_caught:
            log.warning("the drain's budget (%gs) is spent: stopping now", budget.total)

    async def _interrupt_jobs(self) -> None:
        """Stop the jobs still running and wait for their (interrupted) results."""
        assert self.runner is not None
        left = [task_id for task_id, job in self.runner.jobs.items() if not job.done.is_set()]
        if left:
            log.info("drain grace over: interrupting %d job(s): %s", len(left), ", ".join(left))
        async with trio.open_nursery() as stops:
            for task_id in left:
                stops.start_soon(partial(self.runner.cancel, task_id, INTERRUPT_REASON, interrupted=True))
        await self._jobs_finished()

    async def _jobs_finished(self) -> None:
        """Until every provider job (one that starts meanwhile included) has its result."""
        assert self.runner is not None
        while pending := [job for job in self.runner.jobs.values() if not job.done.is_set()]:
            await pending[0].done.wait()

    async def _advert_flushed(self, bound: float) -> None:
        """Until an advert built after the drain is out (bounded), so peers stop choosing us."""
        if self.p2p is None or self.provider is None:
            return
        with trio.move_on_after(bound):
            await self.p2p.flush_advert()

    def reload(self) -> bool:
        """Re-read config.toml and apply its [policy] and [pricing]; False if it is unusable.

        Nothing here may stop the daemon: any error keeps the old settings, is
        logged once, counted, and shown by ``peerd status``.
        """
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            fresh = load(self.config.home)
        except PeerdError as exc:
            return self._reload_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 — edge: a signal handler; a bug in loading must not stop the daemon
            return self._reload_failed(f"{type(exc).__name__}: {exc}", trace=True)
        later = [f.name for f in dataclasses.fields(Config) if f.name not in (*RELOADABLE, "home", "node")
                 and getattr(fresh, f.name) != getattr(self.config, f.name)]
        old = self.config
        self.config = dataclasses.replace(self.config, policy=fresh.policy, pricing=fresh.pricing)
        try:
            self._apply_policy()
        except Exception as exc:  # noqa: BLE001 — edge: as above; put the old settings back everywhere
            self.config = old
            self._apply_policy()
            return self._reload_failed(f"{type(exc).__name__}: {exc}", trace=True)
        self.config_reloads += 1
        self.last_reload = ConfigReloadView(ok=True, error="", at=time.time())
        log.info("SIGHUP: [policy] and [pricing] reloaded" +
                 (f"; changes to [{'], ['.join(later)}] apply after a restart" if later else ""))
        sdnotify.notify("READY=1\nSTATUS=" + self._status_line())
        return True

    def _reload_failed(self, error: str, *, trace: bool = False) -> bool:
        """Log once (a bug's traceback with it), count, remember for ``status``."""
        log.error("SIGHUP: config not reloaded, old settings kept: %s", error, exc_info=trace)
        self.config_reload_errors += 1
        self.last_reload = ConfigReloadView(ok=False, error=error, at=time.time())
        sdnotify.notify(f"READY=1\nSTATUS=config not reloaded: {error}"[:400])
        return False

    def _apply_policy(self) -> None:
        """Push the config's policy and prices to the executor, the provider and our advert."""
        policy = policy_from(self.config)
        if self.executor is not None:
            self.executor.policy = policy
        if self.provider is not None:
            self.provider.settings = dataclasses.replace(
                self.provider.settings, policy=policy, price_cpu_hour=self.config.pricing.cpu_hour,
                price_gpu_hour=self.config.pricing.gpu_hour, max_concurrent=self.config.policy.max_concurrent,
            )
        if self.p2p is not None:
            self.p2p.advert_changed()  # max_timeout, network and prices are in the advert

    # ------------------------------------------------------------ NodeOps
    async def status(self) -> StatusView:
        assert self.p2p is not None
        sample = await self.sample()
        waiting = (TaskState.PLACING.value, TaskState.PENDING.value)
        return StatusView(
            peer_id=self.signer.peer_id,
            addrs=self.p2p.listen_addrs(),
            role=self.role,
            peers_connected=sample.peers_connected,
            peers_known=sample.peers_known,
            tasks_running=sample.jobs_running,
            tasks_queued=sum(sample.tasks.get((TaskRole.REQUESTER.value, state), 0) for state in waiting),
            version=__version__,
            counters=status_counters(sample),
            draining=self.draining,
            config_reload=self.last_reload,
        )

    async def sample(self) -> NodeSample:
        """The node's figures now, for a metrics scrape and ``status``."""
        assert self.p2p is not None
        return NodeSample(
            peer_id=self.signer.peer_id, role=self.role, version=__version__,
            peers_known=len(self.p2p.table.entries(time.time())),
            peers_connected=len(self.p2p.connected_peers()),
            p2p_counters=self.p2p.counters,
            tasks=await self._task_counts(),
            jobs_running=len(self.runner.jobs) if self.runner else 0,
            gpu_leases=gpu_leases(self.ledger),
            draining=self.draining,
            config_reloads=self.config_reloads,
            config_reload_errors=self.config_reload_errors,
        )

    async def _task_counts(self) -> dict[tuple[str, str], int]:
        """Tasks per (side, state)."""
        assert self.store is not None
        return await self.store.count_tasks()

    async def peers(self) -> list[PeerView]:
        assert self.p2p is not None
        return [peer_view(e.advert, list(e.addrs)) for e in self.p2p.table.entries(time.time())]

    async def submit(self, spec: JobSpec, *, local: bool) -> str:
        if self.requester is None:
            raise PeerdError("a seed node does not take jobs")
        since = trio.current_time()
        task_id = await self.requester.submit(spec, local=local)
        assert self._nursery is not None
        self._nursery.start_soon(self._time_placement, task_id, since)
        return task_id

    async def _time_placement(self, task_id: str, since: float) -> None:
        """Observe submit → lease (the first RUNNING event) for the placement histogram."""
        async with aclosing(self.tracker.follow_events(task_id)) as events:
            async for event in events:
                if event.state == TaskState.RUNNING:
                    self.metrics.observe_placement(trio.current_time() - since)
                    return

    async def _view(self, task_id: str) -> TaskView | None:
        assert self.store is not None
        record = await self.store.get_task(task_id)
        if record is None:
            return None
        return task_view(
            record,
            await self.store.attempts(task_id),
            await self.store.get_result(task_id),
            await self.store.get_receipt(task_id),
        )

    async def task(self, task_id: str) -> TaskView | None:
        return await self._view(task_id)

    async def wait(self, task_id: str) -> TaskView:
        view = await self._view(task_id)
        if view is None:
            raise TaskNotFound(task_id)
        if TaskState(view["state"]) not in FINAL_STATES:
            await self.tracker.wait_final(task_id)
        final = await self._view(task_id)
        assert final is not None
        return final

    async def tasks(self, limit: int) -> list[TaskView]:
        """Recent tasks without their output (``show`` has it): a listing stays small."""
        assert self.store is not None
        views = []
        for record in await self.store.list_tasks(limit=limit):
            task_id = record.task_id
            views.append(task_view(
                record, await self.store.attempts(task_id), await self.store.get_result(task_id),
                await self.store.get_receipt(task_id), with_output=False,
            ))
        return views

    async def logs(self, task_id: str, follow: bool) -> AsyncIterator[LogChunkView]:
        view = await self._view(task_id)
        if view is None:
            raise TaskNotFound(task_id)
        live = follow and TaskState(view["state"]) not in FINAL_STATES
        sent = False
        async for chunk in self.tracker.follow_logs(task_id, follow=live):
            sent = True
            if isinstance(chunk, LogGap):  # chunks trimmed before this reader saw them: say so
                yield LogChunkView(stream="stderr", data=chunk.render())
            else:
                yield LogChunkView(stream=chunk.stream.value, data=chunk.data)
        if not sent:  # after a restart only the stored result tails remain
            final = await self._view(task_id) or view
            if final["stdout"]:
                yield LogChunkView(stream="stdout", data=final["stdout"].encode())
            if final["stderr"]:
                yield LogChunkView(stream="stderr", data=final["stderr"].encode())

    async def events(self, task_id: str) -> AsyncIterator[EventView]:
        if await self._view(task_id) is None:
            raise TaskNotFound(task_id)
        async for event in self.tracker.follow_events(task_id):
            yield EventView(task_id=task_id, state=event.state.value, detail=event.detail, at=time.time())

    async def cancel(self, task_id: str) -> CancelView:
        view = await self._view(task_id)
        if view is None:
            raise TaskNotFound(task_id)
        asked = self.requester is not None and await self.requester.cancel(task_id)
        if not asked and self.runner is not None:
            asked = await self.runner.cancel(task_id, "cancelled by the provider's operator")
        detail = "cancel requested" if asked else "the task is not running"
        return CancelView(task_id=task_id, state=view["state"], detail=detail)

    async def receipts(self, limit: int) -> list[ReceiptView]:
        assert self.store is not None
        return [receipt_view(r.receipt) for r in await self.store.list_receipts(limit)]

    async def doctor(self) -> list[DoctorCheck]:
        from .doctor import doctor_views

        return await doctor_views(self.config)

    async def drain(self) -> DrainView:
        if not self.draining:
            self.draining = True
            if self.provider is not None:
                self.provider.draining = True
            if self.p2p is not None:
                self.p2p.advert_changed()
            log.info("draining: no new tasks")
            sdnotify.notify("STATUS=" + self._status_line())
        running = len(self.runner.jobs) if self.runner else 0
        return DrainView(draining=True, tasks_running=running,
                         detail=f"no new tasks; {running} running task(s) may finish")


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
            started = await nursery.start(node.run)
            for addr in started.p2p.listen_addrs():
                print(addr, flush=True)

    try:
        trio.run(main)
    except PeerdError as exc:
        log.error("%s", exc)
        print(f"peerd: {exc}", file=sys.stderr)
        return 1
    return 0
