"""DockerExecutor: leased jobs as Docker containers, supervised by this node.

A service (``await nursery.start(executor.run)``) owning one nursery in which
every container gets a supervisor task: it streams the output into a bounded
tail, waits for the exit under the wall-clock limit (stop with a short grace,
then kill) while watching /out (a tmpfs of the output limit: a job that fills
it is stopped, reason OUTPUT_LIMIT), classifies the end, removes the container
and turns /out into a manifest whose chunks go into the injected OutputStore,
pinned for the task; then ``wait`` returns the RunOutcome. Cancelling the service (or a crash) leaves the
containers running: ``recover`` re-attaches them on the next start.

Flow of one job: start -> [pull if missing] -> create+attach+start (one thread
hop) -> supervisor(wait, logs, /out watch) -> inspect+remove (one hop) -> outputs -> wait().
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from peerd.config import DEFAULT_LIMITS
from peerd.executor.contract import (
    ContainerInfo,
    LogChunk,
    OutputStore,
    PullListener,
    RecoveryReport,
    RunOutcome,
    RunOutcomeState,
    RunSpec,
    check_name,
    is_valid_name,
)
from peerd.executor.engine import Engine, EngineInfo, ImageMissing, OutputSource
from peerd.executor.errors import EngineError, ExecutorError, ImageUnavailable, Reason, UnknownTask
from peerd.executor.gangnet import GangNetworks
from peerd.executor.gpuaccess import (
    NO_SUPPORT,
    GpuAccess,
    GpuSupport,
    ToolkitFacts,
    cuda_requirement,
    decide,
    is_no_gpu_runtime,
    probe_toolkit,
    unmet_cuda,
)
from peerd.executor.logs import LogTail
from peerd.executor.outmount import is_full
from peerd.executor.outputs import OutputManifest, collect_outputs, discard_task_dir, prepare_out_dir
from peerd.executor.plan import (
    ExitState,
    Limits,
    container_name,
    info_from_inspect,
    plan_container,
)
from peerd.executor.policy import ProviderPolicy
from peerd.executor.reconcile import plan_recovery

log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0  # after the exit, how long the last output may take to arrive
OUT_WATCH_SECONDS = 0.2  # how often a bounded /out is checked for being full (the kernel enforces the bound)


@dataclass(eq=False)
class _Task:
    task_id: str
    container_id: str
    gpus: tuple[str, ...]
    memory: int
    timeout: float | None  # seconds; None when re-attached (only the deadline is known)
    deadline: float  # unix time
    out_dir: Path
    bounded: bool  # out_dir is a tmpfs of the output limit
    tail: LogTail
    overlay: bool = False  # a gang member: its network holder and tunnel go when it ends
    launched_at: float = field(default_factory=time.time)
    stopping: RunOutcomeState | None = None  # CANCELLED, TIMEOUT or FAILED (output limit), first one wins
    stop_detail: str = ""
    stop_reason: Reason | None = None
    exited: bool = False
    settled: trio.Event = field(default_factory=trio.Event)  # the outcome is known
    done: trio.Event = field(default_factory=trio.Event)  # ... and the container is gone
    outcome: RunOutcome | None = None

    def mark(self, state: RunOutcomeState, detail: str, reason: Reason | None = None) -> None:
        if self.stopping is None:
            self.stopping, self.stop_detail, self.stop_reason = state, detail, reason


SIGKILL_EXIT = 128 + 9


def classify(task_stop: RunOutcomeState | None, exit_state: ExitState | None) -> RunOutcomeState:
    """How the job ended. We stopped it: cancelled/timeout. Otherwise docker's OOMKilled, or a
    SIGKILL nobody here sent (dockerd's OOM watcher is racy and misses fast OOMs on some hosts;
    the kernel's OOM killer is what sends SIGKILL to a job at its memory limit)."""
    if task_stop is not None:
        return task_stop
    if exit_state is None or exit_state.status == "created":
        return RunOutcomeState.LOST
    if exit_state.oom_killed or exit_state.exit_code == SIGKILL_EXIT:
        return RunOutcomeState.OOM
    return RunOutcomeState.SUCCEEDED if exit_state.exit_code == 0 else RunOutcomeState.FAILED


class DockerExecutor:
    """The Executor on a real dockerd. Every container carries ``peerd.node=<node_id>``."""

    def __init__(
        self,
        node_id: str,
        workdir: Path,
        *,
        base_url: str | None = None,
        policy: ProviderPolicy = ProviderPolicy(),
        log_limit: int = DEFAULT_LIMITS.log_limit,
        output_limit: int = DEFAULT_LIMITS.output_limit,
        stop_grace: float = DEFAULT_LIMITS.stop_grace,
        pull_timeout: float = 120.0,
        limits: Limits = Limits(),
        store: OutputStore | None = None,
        toolkit: Callable[[tuple[str, ...]], ToolkitFacts] = probe_toolkit,
    ) -> None:
        self.node_id = check_name("node id", node_id)
        self.workdir = Path(workdir)
        self.policy = policy
        self.base_url = base_url
        self.log_limit = log_limit
        self.output_limit = output_limit
        self.stop_grace = max(0, math.ceil(stop_grace))  # whole seconds: what dockerd's stop takes
        self._pull_timeout = pull_timeout
        self.limits = limits
        self.store = store  # None: outputs are described (manifest id, size) but not kept
        self._engine: Engine | None = None
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[str, _Task] = {}
        self._starting: set[str] = set()
        self._early_stops: dict[str, str] = {}  # task id -> reason, for stops during start
        self.engine_info = EngineInfo(reachable=False, detail="not started")
        self._toolkit = toolkit
        self.gpu_support: GpuSupport = NO_SUPPORT  # how containers get GPUs here (peerd.executor.gpuaccess)
        self.on_gpu_change: Callable[[], None] | None = None  # told when GPU support is taken back
        self._probed: tuple[ToolkitFacts, EngineInfo] | None = None  # what the last decision was made from
        self._failed: tuple[tuple[ToolkitFacts, EngineInfo], GpuSupport] | None = None  # ... and proved wrong
        self.networks = GangNetworks(self.node_id, limits)

    # ---- service -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[EngineInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to dockerd and supervise jobs until cancelled (containers are left running)."""
        engine = await Engine.connect(self.base_url)
        try:
            self.engine_info = await engine.info()
            await self.probe_gpu_support()
            async with trio.open_nursery() as nursery:
                self._engine, self._nursery = engine, nursery
                task_status.started(self.engine_info)
                await trio.sleep_forever()
        finally:
            self._engine = self._nursery = None
            engine.close()

    def _running(self) -> tuple[Engine, trio.Nursery]:
        if self._engine is None or self._nursery is None:
            raise EngineError(Reason.DOCKER_UNAVAILABLE, "the executor service is not running")
        return self._engine, self._nursery

    @property
    def engine(self) -> Engine:
        """The dockerd this executor runs on (EngineError while the service is not running)."""
        return self._running()[0]

    @property
    def gpu_runtime(self) -> bool:
        """Containers can get GPUs here (in the request form ``gpu_support`` names)."""
        return self.gpu_support.ok

    async def probe_gpu_support(self) -> GpuSupport:
        """Decide again how containers get GPUs (a toolkit installed since is noticed); the decision. A decision
        a GPU start already proved wrong stays NONE until dockerd or the toolkit changes."""
        toolkit = await trio.to_thread.run_sync(self._toolkit, self.engine_info.cdi_spec_dirs)
        key = (toolkit, self.engine_info)
        if self._failed is not None and self._failed[0] == key:
            self.gpu_support = self._failed[1]
        else:
            self._failed = None
            self.gpu_support = decide(self.engine_info, toolkit)
        self._probed = key
        return self.gpu_support

    async def refresh_gpu_support(self) -> bool:
        """Ask dockerd again (periodic inventory) and decide again; whether containers can get GPUs now."""
        if self._engine is not None:
            try:
                self.engine_info = await self._engine.info()
            except EngineError as exc:
                log.warning("docker info failed, GPU support left as it was: %s", exc)
                return self.gpu_runtime
        await self.probe_gpu_support()
        return self.gpu_runtime

    async def image_cuda(self, image: str) -> str:
        """The CUDA version a local image asks for (its NVIDIA_REQUIRE_CUDA); "" when it asks none, or it is not
        here (then the toolkit checks it at the start), or dockerd does not say."""
        try:
            env = await self.engine.image_env(image)
        except EngineError as exc:
            log.debug("cannot read %s's environment: %s", image, exc)
            return ""
        return cuda_requirement((env or {}).get("NVIDIA_REQUIRE_CUDA", ""))

    def _gpu_start_failed(self, spec: RunSpec, exc: EngineError) -> ExecutorError:
        """A GPU container dockerd could not give its GPUs: no GPU jobs here until the next decision."""
        log.warning("task %s: GPU runtime failed (%s): taking GPU support back: %s",
                    spec.task_id, self.gpu_support.access, exc.detail)
        self.gpu_support = GpuSupport(GpuAccess.NONE, f"a GPU container failed to start: {exc.detail}")
        if self._probed is not None:
            self._failed = (self._probed, self.gpu_support)
        if self.on_gpu_change is not None:
            self.on_gpu_change()
        return ExecutorError(Reason.NO_GPU_RUNTIME, f"this host cannot give containers GPUs: {exc.detail}")

    def _out_dir(self, task_id: str) -> Path:
        return self.workdir / task_id / "out"

    # ---- start -------------------------------------------------------------------------
    async def start(self, spec: RunSpec, *, on_pull: PullListener | None = None) -> None:
        """Refuse (typed reason) or launch the job; returns once the container runs."""
        engine, nursery = self._running()
        self.policy.check(spec, gpu_runtime=self.gpu_runtime)
        if spec.overlay is not None:
            self.networks.require()
        if spec.task_id in self._tasks or spec.task_id in self._starting:
            raise ExecutorError(Reason.TASK_EXISTS, f"task {spec.task_id!r} is already running here")
        self._starting.add(spec.task_id)
        try:
            task, sources = await self._launch(engine, spec, on_pull)
        except BaseException:
            self._early_stops.pop(spec.task_id, None)
            raise
        finally:
            self._starting.discard(spec.task_id)
        self._tasks[spec.task_id] = task
        nursery.start_soon(self._supervise, task, sources)
        early = self._early_stops.pop(spec.task_id, None)
        if early is not None:  # stop() came while the container was being created
            await self.stop(spec.task_id, early)

    async def _launch(
        self, engine: Engine, spec: RunSpec, on_pull: PullListener | None
    ) -> tuple[_Task, list[OutputSource]]:
        out_dir = self._out_dir(spec.task_id)
        try:
            bounded = await trio.to_thread.run_sync(prepare_out_dir, out_dir, spec.user, self.output_limit)
        except OSError as exc:
            await trio.to_thread.run_sync(discard_task_dir, out_dir.parent)
            raise ExecutorError(Reason.OUTPUT_ERROR, f"cannot prepare /out: {exc}") from exc
        if not bounded:
            log.warning("task %s: cannot mount a tmpfs for /out here (needs CAP_SYS_ADMIN in dockerd's mount "
                        "namespace): /out is bounded only when collected", spec.task_id)
        deadline = time.time() + spec.timeout
        try:
            container_id, sources = await self._create(engine, spec, out_dir, deadline, on_pull)
        except BaseException:  # refused, failed or cancelled: nothing of this task may stay
            with trio.CancelScope(shield=True):
                if spec.overlay is not None:
                    await self.networks.close(engine, spec.task_id)
                await trio.to_thread.run_sync(discard_task_dir, out_dir.parent)
            raise
        task = _Task(
            task_id=spec.task_id, container_id=container_id, gpus=spec.gpus, memory=spec.memory,
            timeout=spec.timeout, deadline=deadline, out_dir=out_dir, bounded=bounded,
            tail=LogTail(self.log_limit), overlay=spec.overlay is not None,
        )
        return task, sources

    async def _create(
        self, engine: Engine, spec: RunSpec, out_dir: Path, deadline: float, on_pull: PullListener | None
    ) -> tuple[str, list[OutputSource]]:
        """Create and start the job's container, pulling its image if it is not here. A gang member's
        network comes first: its holder runs the job's image, so a missing image is pulled there."""
        network_of = None
        if spec.overlay is not None:
            try:
                network_of = await self.networks.open(engine, spec)
            except ImageMissing:
                await self._pull(engine, spec, on_pull)
                network_of = await self.networks.open(engine, spec)
        swarm = self._probed[0].swarm_resources if self._probed is not None else ()
        plan = plan_container(spec, node_id=self.node_id, out_dir=out_dir, deadline=deadline, limits=self.limits,
                              network_of=network_of, gpu_access=self.gpu_support.access, device_variables=swarm)
        try:
            try:
                return await engine.launch(plan)
            except ImageMissing:
                await self._pull(engine, spec, on_pull)
                return await engine.launch(plan)
        except EngineError as exc:
            if spec.gpus and not isinstance(exc, ImageUnavailable) and is_no_gpu_runtime(exc.detail):
                raise self._gpu_start_failed(spec, exc) from exc
            need = unmet_cuda(exc.detail) if spec.gpus else None
            if need is not None:
                raise ExecutorError(Reason.START_FAILED, f"the image needs CUDA {need} (NVIDIA_REQUIRE_CUDA), newer "
                                                         f"than this provider's driver supports: {exc.detail}") from exc
            raise

    async def _pull(self, engine: Engine, spec: RunSpec, on_pull: PullListener | None) -> None:
        if spec.image_id:  # a carried image is loaded before the start, never pulled
            raise ImageUnavailable(f"image {spec.image_id} is not in this dockerd")
        await engine.pull(spec.image, timeout=self._pull_timeout, on_progress=on_pull)

    # ---- supervision -------------------------------------------------------------------
    async def _supervise(self, task: _Task, sources: list[OutputSource] | None) -> None:
        engine, _ = self._running()
        lost = False
        try:
            failure = await self._follow(engine, task, sources)
            if failure is not None:
                raise failure
            outcome = await self._outcome(task, await engine.exit_state(task.container_id))
        except ExecutorError as exc:  # the edge of one job: dockerd failed under it
            log.warning("task %s lost: %s", task.task_id, exc)
            outcome, lost = await self._lose(engine, task, exc.detail), True
        task.outcome = outcome
        task.tail.close()
        task.settled.set()  # outcome() answers now; removing the exited container is dockerd's slowest step
        if not lost:  # _lose removed it already
            try:
                await engine.remove(task.container_id)
            except EngineError as exc:
                log.warning("could not remove the container of finished task %s: %s", task.task_id, exc)
        task.done.set()

    async def _follow(self, engine: Engine, task: _Task, sources: list[OutputSource] | None) -> ExecutorError | None:
        """Pump output and wait for the exit (enforcing the limit); then let the output drain."""
        try:
            if sources is None:
                sources = await engine.follow(task.container_id)
        except EngineError as exc:
            log.warning("output of task %s cannot be followed: %s", task.task_id, exc)
            sources = []
        async with trio.open_nursery() as inner:
            pumps_done = [trio.Event() for _ in sources]
            for source, done in zip(sources, pumps_done, strict=True):
                inner.start_soon(self._pump, engine, task, source, done)
            if task.bounded:
                inner.start_soon(self._watch_out, engine, task)
            try:
                await self._await_exit(engine, task)
            except ExecutorError as exc:
                inner.cancel_scope.cancel()
                return exc
            with trio.move_on_after(DRAIN_SECONDS):
                for done in pumps_done:
                    await done.wait()
            inner.cancel_scope.cancel()
        return None

    async def _pump(self, engine: Engine, task: _Task, source: OutputSource, done: trio.Event) -> None:
        try:
            while (chunk := await engine.next_chunk(source)) is not None:
                task.tail.append(chunk.stream, chunk.data)
        except EngineError as exc:
            log.warning("output of task %s cut short: %s", task.task_id, exc)
        finally:
            done.set()

    async def _watch_out(self, engine: Engine, task: _Task) -> None:
        """Stop the job once its /out is full: its writes fail already, it gets no further."""
        try:
            while not await trio.to_thread.run_sync(is_full, task.out_dir):
                await trio.sleep(OUT_WATCH_SECONDS)
        except OSError as exc:
            log.warning("/out of task %s cannot be watched: %s", task.task_id, exc)
            return
        task.mark(RunOutcomeState.FAILED, f"{Reason.OUTPUT_LIMIT}: /out reached the output limit of "
                  f"{self.output_limit} bytes; stopped", Reason.OUTPUT_LIMIT)
        try:
            await engine.stop(task.container_id, 0)
        except EngineError as exc:
            log.warning("task %s at its output limit could not be stopped: %s", task.task_id, exc)

    async def _await_exit(self, engine: Engine, task: _Task) -> None:
        with trio.move_on_after(max(0.0, task.deadline - time.time())):
            await engine.wait_exit(task.container_id)
            task.exited = True
            return
        limit = f" of {task.timeout:g}s" if task.timeout else ""
        task.mark(RunOutcomeState.TIMEOUT, f"time limit{limit} reached")
        await engine.stop(task.container_id, self.stop_grace)
        await engine.wait_exit(task.container_id)
        task.exited = True

    async def _outcome(self, task: _Task, exit_state: ExitState | None) -> RunOutcome:
        if task.overlay:  # the container is gone: its network goes too
            engine, _ = self._running()
            await self.networks.close(engine, task.task_id)
        outputs = await self._collect(task)
        if outputs.over_limit:  # it filled /out and ended before the watcher saw it
            task.mark(RunOutcomeState.FAILED, f"{Reason.OUTPUT_LIMIT}: /out reached the output limit of "
                      f"{self.output_limit} bytes", Reason.OUTPUT_LIMIT)
        state = classify(task.stopping, exit_state)
        reason = task.stop_reason if state is task.stopping else None
        started = exit_state.started_at if exit_state and exit_state.started_at else task.launched_at
        finished = exit_state.finished_at if exit_state and exit_state.finished_at else time.time()
        finished = max(finished, started)  # dockerd stamps a very short job's start after its end
        wall = finished - started
        return RunOutcome(
            task_id=task.task_id, state=state,
            exit_code=exit_state.exit_code if exit_state and exit_state.status != "created" else None,
            stdout=task.tail.tail("stdout"), stderr=task.tail.tail("stderr"),
            output_manifest=outputs.manifest_id, output_digest=outputs.digest, output_size=outputs.size,
            output_truncated=bool(outputs.skipped), started_at=started, finished_at=finished,
            wall_time=wall, gpu_seconds=wall * len(task.gpus),
            detail=self._detail(task, state, exit_state, outputs), reason=reason,
        )

    async def _collect(self, task: _Task) -> OutputManifest:
        try:
            return await collect_outputs(task.out_dir, task.task_id, self.output_limit, self.store)
        except OSError as exc:
            log.warning("outputs of task %s unreadable: %s", task.task_id, exc)
            return OutputManifest(None, 0, (), False, f"unreadable: {exc}")

    @staticmethod
    def _detail(task: _Task, state: RunOutcomeState, exit_state: ExitState | None, outputs: OutputManifest) -> str:
        if state in (RunOutcomeState.CANCELLED, RunOutcomeState.TIMEOUT) or (
            state is task.stopping and task.stop_reason is not None
        ):
            text = task.stop_detail
        elif state is RunOutcomeState.OOM and exit_state is not None and exit_state.oom_killed:
            text = f"out of memory: limit of {task.memory} bytes exceeded"
        elif state is RunOutcomeState.OOM:
            text = f"killed by SIGKILL, taken as out of memory (limit {task.memory} bytes)"
        elif state is RunOutcomeState.LOST:
            text = "the container never ran" if exit_state else "the container disappeared"
        else:
            text = f"exit code {exit_state.exit_code if exit_state else None}"
        if exit_state is not None and exit_state.error:
            text += f"; docker: {exit_state.error}"
        if outputs.skipped:
            text += f"; outputs truncated ({len(outputs.skipped)} link(s) or special file(s) left out)"
        if outputs.problem:
            text += f"; no outputs: {outputs.problem}"
        return text

    async def _lose(self, engine: Engine, task: _Task, detail: str) -> RunOutcome:
        try:
            await engine.remove(task.container_id)
        except EngineError as exc:
            log.warning("could not remove the container of lost task %s: %s", task.task_id, exc)
        task.mark(RunOutcomeState.LOST, detail)
        return await self._outcome(task, None)

    # ---- the rest of the contract ------------------------------------------------------
    async def wait(self, task_id: str) -> RunOutcome:
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        await task.done.wait()
        self._tasks.pop(task_id, None)
        assert task.outcome is not None
        return task.outcome

    async def outcome(self, task_id: str) -> RunOutcome:
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        await task.settled.wait()
        assert task.outcome is not None
        return task.outcome

    async def run_job(self, spec: RunSpec, *, on_pull: PullListener | None = None) -> RunOutcome:
        """start + wait: the container is gone when this returns."""
        await self.start(spec, on_pull=on_pull)
        return await self.wait(spec.task_id)

    async def stop(self, task_id: str, reason: str) -> None:
        """Cancel: SIGTERM, SIGKILL after the grace; returns once the container stopped."""
        engine, _ = self._running()
        task = self._tasks.get(task_id)
        if task is None and task_id in self._starting:
            self._early_stops.setdefault(task_id, reason)
            return
        if task is None:
            raise UnknownTask(task_id)
        if task.exited:  # too late: it ended by itself
            return
        task.mark(RunOutcomeState.CANCELLED, f"cancelled: {reason}")
        await engine.stop(task.container_id, self.stop_grace)

    async def stop_all(self, reason: str) -> None:
        """Cancel every job this process supervises (drain)."""
        async with trio.open_nursery() as nursery:
            for task_id in list(self._tasks):
                nursery.start_soon(self.stop, task_id, reason)

    async def logs(self, task_id: str) -> AsyncIterator[LogChunk]:
        """What the job wrote (as much as is retained), then live chunks until it ends."""
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        async for chunk in task.tail.follow():
            yield chunk

    async def inspect(self, task_id: str) -> ContainerInfo | None:
        engine, _ = self._running()
        details = await engine.inspect(container_name(self.node_id, check_name("task id", task_id)))
        if details is None:
            return None
        info = info_from_inspect(details)
        return info if info.node_id == self.node_id else None

    async def list_owned(self) -> list[ContainerInfo]:
        engine, _ = self._running()
        return await engine.list_owned(self.node_id)

    async def discard(self, task_id: str) -> None:
        """Delete whatever is left of the task's host directory (its chunks are the store's: the
        caller releases them there)."""
        if task_id in self._tasks or task_id in self._starting:
            raise ExecutorError(Reason.TASK_EXISTS, f"task {task_id!r} is still running here")
        await trio.to_thread.run_sync(discard_task_dir, self.workdir / check_name("task id", task_id))

    def running(self) -> set[str]:
        """Task ids this process supervises now."""
        return set(self._tasks)

    # ---- recovery ----------------------------------------------------------------------
    async def recover(self, tracked: set[str]) -> RecoveryReport:
        """Re-attach tracked running containers, finish tracked exited ones, remove the rest
        of this node's containers; tracked tasks without a container come back lost."""
        engine, nursery = self._running()
        for task_id in tracked:
            check_name("task id", task_id)
        plan = plan_recovery(
            await engine.list_owned(self.node_id), node_id=self.node_id,
            tracked=set(tracked), active=set(self._tasks) | self._starting,
        )
        for info in plan.remove:
            await engine.remove(info.container_id)
            if info.task_id not in tracked and is_valid_name(info.task_id):  # its outputs go too
                await trio.to_thread.run_sync(discard_task_dir, self.workdir / info.task_id)
        for info in plan.reattach:
            task = self._adopt(info)
            self._tasks[task.task_id] = task
            nursery.start_soon(self._supervise, task, None)
        finished = [await self._collect_exited(engine, info) for info in plan.collect]
        finished += [
            await self._lose(engine, self._adopt_missing(t), "no container after restart") for t in plan.missing
        ]
        for what in await self.networks.recover(engine, set(self._tasks) | self._starting):
            log.info("removed leftover gang network: %s", what)
        return RecoveryReport(
            reattached=tuple(i.task_id for i in plan.reattach),
            finished=tuple(finished),
            removed=tuple(i.task_id for i in plan.remove),
        )

    def _adopt(self, info: ContainerInfo) -> _Task:
        out_dir = self._out_dir(info.task_id)
        deadline = info.deadline if info.deadline is not None else time.time()
        return _Task(
            task_id=info.task_id, container_id=info.container_id, gpus=info.gpus, memory=info.memory,
            timeout=None, deadline=deadline, out_dir=out_dir, bounded=os.path.ismount(out_dir),
            tail=LogTail(self.log_limit), overlay=True,  # whether it had one is not known: close looks
        )

    def _adopt_missing(self, task_id: str) -> _Task:
        out_dir = self._out_dir(task_id)
        return _Task(
            task_id=task_id, container_id=container_name(self.node_id, task_id), gpus=(), memory=0,
            timeout=None, deadline=0.0, out_dir=out_dir, bounded=os.path.ismount(out_dir),
            tail=LogTail(self.log_limit), overlay=True,
        )

    async def _collect_exited(self, engine: Engine, info: ContainerInfo) -> RunOutcome:
        task = self._adopt(info)
        stdout, stderr = await engine.output_tails(info.container_id, self.log_limit)
        task.tail.append("stdout", stdout)
        task.tail.append("stderr", stderr)
        return await self._outcome(task, await engine.finish(info.container_id))

