"""The running daemon's lifecycle: signals, drain, stop, reload.

Stopping (SIGTERM or SIGINT): a draining advert goes out, new requests are
rejected with ``draining``, running jobs get ``limits.drain_grace`` to finish
(a second signal cuts the grace short), the rest are stopped and reported
``interrupted``; the p2p service stays up until the task streams have delivered
their results and taken the co-signed receipts, then every service stops, the
store closes and the daemon exits 0. Every step is bounded and the whole drain
by one budget (``drainplan``). ``peerd drain`` does the first two steps
only. SIGHUP re-reads ``[policy]`` and ``[pricing]`` (other sections need a
restart).

``RunState`` is what changes while the node runs (the live config, draining,
reload counts, task streams in flight); it exists before the services do,
since they read it (the advert says whether we drain). ``Lifecycle`` acts on
it and on the started ``Services``. Deadlines are on trio's clock; the wall
clock (``Services.clock``) only stamps what is shown or signed.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import trio

from peerd.config import Config, load
from peerd.control.ops import ConfigReloadView
from peerd.daemon.drainplan import drain_budget
from peerd.daemon.services import Services
from peerd.daemon.wiring import policy_from
from peerd.errors import PeerdError
from peerd.host import sdnotify
from peerd.jobs.jobrun import JobRunner

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


class RunState:
    """What changes while the node runs."""

    def __init__(self, config: Config) -> None:
        self.config = config  # the live config: SIGHUP replaces its [policy] and [pricing]
        self.draining = False
        self.stopping = False
        self.config_reloads = 0
        self.config_reload_errors = 0
        self.last_reload: ConfigReloadView | None = None
        self.task_streams = InFlight()  # provider task streams being served (drain waits for them)


class Lifecycle:
    """Signals, drain, stop and reload of a started node."""

    def __init__(self, state: RunState, services: Services) -> None:
        self.state = state
        self.services = services
        self._grace = trio.CancelScope()  # the drain's wait for running jobs; a second signal cancels it

    def status_line(self) -> str:
        peers = len(self.services.p2p.connected_peers())
        line = f"{peers} peers, {self.services.running()} running tasks"
        return line + (", draining" if self.state.draining else "")

    # ------------------------------------------------------------ signals, stop
    async def signals(
        self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGHUP reloads; the first SIGTERM/SIGINT drains and stops; a second one cuts the grace short."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.reload()
                elif not self.state.stopping:
                    self.state.stopping = True
                    log.info("%s: draining, then stopping", name)
                    nursery.start_soon(self._stop, nursery)
                else:
                    log.warning("%s again: interrupting running jobs now", name)
                    self._grace.cancel()

    async def _stop(self, nursery: trio.Nursery) -> None:
        sdnotify.notify("STOPPING=1")
        await self.drain_and_stop()
        log.info("drained; stopping")
        nursery.cancel_scope.cancel()

    async def drain_and_stop(self) -> None:
        """Drain, give running jobs their grace, interrupt the rest, let the streams report.

        Each step has its own bound and the whole drain one budget (``drain_budget``),
        so stopping never outlasts systemd's TimeoutStopSec (``stop_timeout``).
        """
        budget = drain_budget(self.state.config)
        announce = not self.state.draining  # after `peerd drain` the draining advert is already out
        self.drain()
        with trio.move_on_after(budget.total) as whole:
            if self.services.provider is not None:
                runner = self.services.provider.runner
                self._grace.deadline = trio.current_time() + budget.grace
                with self._grace:
                    await _jobs_finished(runner)
                with trio.move_on_after(budget.interrupt):
                    await _interrupt_jobs(runner)
            with trio.move_on_after(budget.deliver):
                await self.state.task_streams.wait_idle()  # results sent, co-signed receipts taken
            if announce and self.services.provider is not None:
                with trio.move_on_after(budget.announce):  # so that peers stop choosing us
                    await self.services.p2p.flush_advert()
        if whole.cancelled_caught:
            log.warning("the drain's budget (%gs) is spent: stopping now", budget.total)

    # ------------------------------------------------------------ drain
    def drain(self) -> int:
        """Take no new tasks (idempotent): the provider refuses, the advert says so. Jobs still running."""
        if not self.state.draining:
            self.state.draining = True
            if self.services.provider is not None:
                self.services.provider.provider.draining = True
            self.services.p2p.advert_changed()
            log.info("draining: no new tasks")
            sdnotify.notify("STATUS=" + self.status_line())
        return self.services.running()

    # ------------------------------------------------------------ reload
    def reload(self) -> bool:
        """Re-read config.toml and apply its [policy] and [pricing]; False if it is unusable.

        Nothing here may stop the daemon: any error keeps the old settings, is
        logged once, counted, and shown by ``peerd status``.
        """
        state = self.state
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")  # systemd's clock
        try:
            fresh = load(state.config.home)
        except PeerdError as exc:
            return self._reload_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 — edge: a signal handler; a bug in loading must not stop the daemon
            return self._reload_failed(f"{type(exc).__name__}: {exc}", trace=True)
        later = [f.name for f in dataclasses.fields(Config) if f.name not in (*RELOADABLE, "home", "node")
                 and getattr(fresh, f.name) != getattr(state.config, f.name)]
        old = state.config
        state.config = dataclasses.replace(state.config, policy=fresh.policy, pricing=fresh.pricing)
        try:
            self._apply_policy()
        except Exception as exc:  # noqa: BLE001 — edge: as above; put the old settings back everywhere
            state.config = old
            self._apply_policy()
            return self._reload_failed(f"{type(exc).__name__}: {exc}", trace=True)
        state.config_reloads += 1
        state.last_reload = ConfigReloadView(ok=True, error="", at=self.services.clock())
        log.info("SIGHUP: [policy] and [pricing] reloaded" +
                 (f"; changes to [{'], ['.join(later)}] apply after a restart" if later else ""))
        sdnotify.notify("READY=1\nSTATUS=" + self.status_line())
        return True

    def _reload_failed(self, error: str, *, trace: bool = False) -> bool:
        """Log once (a bug's traceback with it), count, remember for ``status``."""
        log.error("SIGHUP: config not reloaded, old settings kept: %s", error, exc_info=trace)
        self.state.config_reload_errors += 1
        self.state.last_reload = ConfigReloadView(ok=False, error=error, at=self.services.clock())
        sdnotify.notify(f"READY=1\nSTATUS=config not reloaded: {error}"[:400])
        return False

    def _apply_policy(self) -> None:
        """Push the config's policy and prices to the executor, the provider and our advert."""
        config, ours = self.state.config, self.services.provider
        if ours is not None:
            policy = policy_from(config)
            ours.executor.policy = policy
            ours.provider.settings = dataclasses.replace(
                ours.provider.settings, policy=policy, price_cpu_hour=config.pricing.cpu_hour,
                price_gpu_hour=config.pricing.gpu_hour, max_concurrent=config.policy.max_concurrent,
            )
        self.services.p2p.advert_changed()  # max_timeout, network and prices are in the advert


async def _interrupt_jobs(runner: JobRunner) -> None:
    """Stop the jobs still running and wait for their (interrupted) results."""
    left = [task_id for task_id, job in runner.jobs.items() if not job.done.is_set()]
    if left:
        log.info("drain grace over: interrupting %d job(s): %s", len(left), ", ".join(left))
    async with trio.open_nursery() as stops:
        for task_id in left:
            stops.start_soon(partial(runner.cancel, task_id, INTERRUPT_REASON, interrupted=True))
    await _jobs_finished(runner)


async def _jobs_finished(runner: JobRunner) -> None:
    """Until every provider job (one that starts meanwhile included) has its result."""
    while pending := [job for job in runner.jobs.values() if not job.done.is_set()]:
        await pending[0].done.wait()
