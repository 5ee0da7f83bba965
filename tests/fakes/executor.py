"""A scripted ``Executor`` for fast tests of the provider's and requester's failure paths.

``FakeExecutor`` keeps every rule of ``peerd.executor.contract`` (one task per
id, exactly one ``RunOutcome`` per started task, the "container" gone once
``wait`` returned, ``recover`` touching only this node's containers, typed
``ExecutorError``s with the same reasons as ``DockerExecutor``); what a job
does is scripted instead of run. tests/executor/test_contract.py runs the same
checks against both, so the two cannot drift apart unnoticed; the assignment
at the bottom makes mypy check the fake against the ``Executor`` protocol.

``FakeHost`` plays dockerd: its containers outlive one ``FakeExecutor`` (a
provider restart re-attaches through ``recover``), and a test steers them:
``release`` ends a held job, ``write`` adds output, ``vanish`` removes a
container behind the executor's back. A job's script is chosen by its image
(``host.scripts[image]``), so a test need not know task ids in advance.
Time limits run on trio's clock, so a ``MockClock`` drives them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from peerd.executor.contract import (
    ContainerInfo,
    Executor,
    LogChunk,
    PullListener,
    PullProgress,
    RecoveryReport,
    RunOutcome,
    RunOutcomeState,
    RunSpec,
    check_name,
)
from peerd.executor.errors import EngineError, ExecutorError, Reason, UnknownTask
from peerd.executor.logs import LogTail
from peerd.executor.policy import ProviderPolicy
from peerd.executor.reconcile import plan_recovery

KILLED = 128 + 15  # SIGTERM's exit code: what a stopped busybox job returns


@dataclass(frozen=True)
class Script:
    """What one job does. Without ``hold`` it writes ``output`` and exits with ``exit_code`` at once."""

    exit_code: int = 0
    output: tuple[tuple[str, bytes], ...] = ()  # (stream, data) written as the job starts
    hold: bool = False  # runs until released, stopped, timed out or vanished
    refuse: ExecutorError | None = None  # start() raises this; nothing is created
    start_gate: trio.Event | None = None  # start() waits for it (an image pull, say) before creating
    oom: bool = False  # the kernel killed it at its memory limit
    output_manifest: bytes | None = None  # id of the /out manifest the job "left" (None when empty)
    output_size: int = 0
    output_limit: bool = False  # it filled /out: stopped, state FAILED, reason OUTPUT_LIMIT


@dataclass(eq=False)
class Container:
    """One job's container on the fake host."""

    spec: RunSpec
    node_id: str
    script: Script
    deadline: float  # trio time
    started_at: float  # unix time (the executor's clock)
    output: list[tuple[str, bytes]] = field(default_factory=list)
    exit_code: int | None = None
    oom_killed: bool = False
    exited: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)  # vanished or removed
    wrote: trio.Event = field(default_factory=trio.Event)

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    @property
    def state(self) -> str:
        return "exited" if self.exited.is_set() else "running"

    def exit(self, code: int, *, oom: bool = False) -> None:
        if not self.exited.is_set():
            self.exit_code, self.oom_killed = code, oom
            self.exited.set()

    def write(self, stream: str, data: bytes) -> None:
        self.output.append((stream, data))
        self.wrote.set()
        self.wrote = trio.Event()


class FakeHost:
    """The fake dockerd: containers by task id, scripts by image, and a way to wait on them."""

    def __init__(self, default: Script | None = None) -> None:
        self.default = default or Script()
        self.scripts: dict[str, Script] = {}
        self.containers: dict[str, Container] = {}
        self.started: list[str] = []  # task ids, in the order their containers were created
        self.discarded: list[str] = []
        self._changed = trio.Event()

    def script_for(self, spec: RunSpec) -> Script:
        return self.scripts.get(spec.image, self.default)

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_running(self, count: int = 1) -> str:
        """The task id of the ``count``-th container ever created here, once it exists."""
        await self.wait_until(lambda: len(self.started) >= count)
        return self.started[count - 1]

    def running(self, task_id: str) -> bool:
        container = self.containers.get(task_id)
        return container is not None and not container.exited.is_set()

    # ---- steering a job -------------------------------------------------------------
    def release(self, task_id: str, exit_code: int | None = None) -> None:
        """A held job exits (with its script's exit code unless given)."""
        container = self.containers[task_id]
        container.exit(container.script.exit_code if exit_code is None else exit_code,
                       oom=container.script.oom)
        self.changed()

    def write(self, task_id: str, stream: str, data: bytes) -> None:
        self.containers[task_id].write(stream, data)

    def vanish(self, task_id: str) -> None:
        """The container disappears (removed by someone else, dockerd lost it)."""
        container = self.containers.pop(task_id)
        container.gone.set()
        self.changed()


@dataclass(eq=False)
class _Task:
    container: Container
    tail: LogTail
    stopping: RunOutcomeState | None = None
    stop_detail: str = ""
    stop_reason: Reason | None = None
    sent: int = 0  # how much of the container's output reached the tail
    settled: trio.Event = field(default_factory=trio.Event)  # the outcome is known
    done: trio.Event = field(default_factory=trio.Event)  # ... and the container is gone
    outcome: RunOutcome | None = None

    def mark(self, state: RunOutcomeState, detail: str, reason: Reason | None = None) -> None:
        if self.stopping is None:
            self.stopping, self.stop_detail, self.stop_reason = state, detail, reason


class FakeExecutor:
    """The Executor contract over a ``FakeHost``. A service like ``DockerExecutor``: start ``run`` first."""

    def __init__(
        self,
        node_id: str,
        host: FakeHost | None = None,
        *,
        policy: ProviderPolicy | None = None,
        gpu_runtime: bool = False,
        log_limit: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = check_name("node id", node_id)
        self.host = host or FakeHost()
        self.policy = policy or ProviderPolicy()
        self.gpu_runtime = gpu_runtime
        self.image_cuda_versions: dict[str, str] = {}  # image -> the CUDA version its NVIDIA_REQUIRE_CUDA asks
        self._log_limit = log_limit
        self._clock = clock
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[str, _Task] = {}
        self._starting: set[str] = set()
        self._early_stops: dict[str, str] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise jobs until cancelled; the host's containers stay (``recover`` finds them)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            raise EngineError(Reason.DOCKER_UNAVAILABLE, "the executor service is not running")
        return self._nursery

    async def image_cuda(self, image: str) -> str:
        await trio.lowlevel.checkpoint()
        return self.image_cuda_versions.get(image, "")

    # ---- start ------------------------------------------------------------------------
    async def start(self, spec: RunSpec, *, on_pull: PullListener | None = None) -> None:
        nursery = self._running()
        self.policy.check(spec, gpu_runtime=self.gpu_runtime)
        if spec.task_id in self._tasks or spec.task_id in self._starting or spec.task_id in self.host.containers:
            raise ExecutorError(Reason.TASK_EXISTS, f"task {spec.task_id!r} is already running here")
        script = self.host.script_for(spec)
        self._starting.add(spec.task_id)
        try:
            if script.start_gate is not None:
                if on_pull is not None:
                    on_pull(PullProgress(image=spec.image, status="Pulling"))
                await script.start_gate.wait()
            await trio.lowlevel.checkpoint()
            if script.refuse is not None:
                raise script.refuse
        except BaseException:
            self._early_stops.pop(spec.task_id, None)
            raise
        finally:
            self._starting.discard(spec.task_id)
        container = Container(spec=spec, node_id=self.node_id, script=script,
                              deadline=trio.current_time() + spec.timeout, started_at=self._clock())
        for stream, data in script.output:
            container.write(stream, data)
        if script.output_limit:  # fills /out at once: the executor stops it
            container.exit(KILLED)
        elif not script.hold:
            container.exit(script.exit_code, oom=script.oom)
        self.host.containers[spec.task_id] = container
        self.host.started.append(spec.task_id)
        self.host.changed()
        self._supervise(nursery, container)
        early = self._early_stops.pop(spec.task_id, None)
        if early is not None:
            await self.stop(spec.task_id, early)

    def _supervise(self, nursery: trio.Nursery, container: Container) -> _Task:
        task = _Task(container=container, tail=LogTail(self._log_limit))
        self._tasks[container.task_id] = task
        nursery.start_soon(self._follow, task)
        return task

    # ---- supervision ------------------------------------------------------------------
    async def _follow(self, task: _Task) -> None:
        container = task.container
        async with trio.open_nursery() as inner:
            inner.start_soon(self._pump, task)
            with trio.move_on_at(container.deadline) as limit:
                await self._exit_or_gone(container)
            if limit.cancelled_caught:
                task.mark(RunOutcomeState.TIMEOUT, f"time limit of {container.spec.timeout:g}s reached")
                container.exit(KILLED)
            await trio.lowlevel.checkpoint()  # the pump takes the last output (the engine's drain)
            inner.cancel_scope.cancel()
        self._pump_now(task)
        if container.gone.is_set():
            task.mark(RunOutcomeState.LOST, "the container disappeared")
        task.outcome = self._outcome(task)
        task.tail.close()
        task.settled.set()
        await trio.lowlevel.checkpoint()  # removing the container comes after, as dockerd's does
        self.host.containers.pop(container.task_id, None)  # the executor removes the container
        container.gone.set()
        self.host.changed()
        task.done.set()

    @staticmethod
    async def _exit_or_gone(container: Container) -> None:
        async with trio.open_nursery() as race:
            async def settle(event: trio.Event) -> None:
                await event.wait()
                race.cancel_scope.cancel()

            race.start_soon(settle, container.exited)
            race.start_soon(settle, container.gone)

    async def _pump(self, task: _Task) -> None:
        while True:
            wrote = task.container.wrote
            self._pump_now(task)
            await wrote.wait()

    @staticmethod
    def _pump_now(task: _Task) -> None:
        for stream, data in task.container.output[task.sent:]:
            task.tail.append(stream, data)
        task.sent = len(task.container.output)

    def _outcome(self, task: _Task) -> RunOutcome:
        container = task.container
        finished = max(self._clock(), container.started_at)
        if task.stopping is None and container.script.output_limit:
            task.mark(RunOutcomeState.FAILED, f"{Reason.OUTPUT_LIMIT}: /out reached the output limit; stopped",
                      Reason.OUTPUT_LIMIT)
        if task.stopping is not None:
            state = task.stopping
        elif container.oom_killed:
            state = RunOutcomeState.OOM
        else:
            state = RunOutcomeState.SUCCEEDED if container.exit_code == 0 else RunOutcomeState.FAILED
        detail = task.stop_detail if task.stopping is not None else {
            RunOutcomeState.OOM: f"out of memory: limit of {container.spec.memory} bytes exceeded",
        }.get(state, f"exit code {container.exit_code}")
        wall = finished - container.started_at
        lost = state is RunOutcomeState.LOST
        manifest = None if lost else container.script.output_manifest
        return RunOutcome(
            task_id=container.task_id, state=state, exit_code=None if lost else container.exit_code,
            stdout=task.tail.tail("stdout"), stderr=task.tail.tail("stderr"),
            output_manifest=manifest, output_digest=manifest.hex() if manifest else "",
            output_size=container.script.output_size if manifest else 0,
            started_at=container.started_at, finished_at=finished, wall_time=wall,
            gpu_seconds=wall * len(container.spec.gpus), detail=detail,
            reason=task.stop_reason if state is task.stopping else None,
        )

    # ---- the rest of the contract -----------------------------------------------------
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

    async def stop(self, task_id: str, reason: str) -> None:
        self._running()
        task = self._tasks.get(task_id)
        if task is None and task_id in self._starting:
            self._early_stops.setdefault(task_id, reason)
            return
        if task is None:
            raise UnknownTask(task_id)
        await trio.lowlevel.checkpoint()
        if task.container.exited.is_set():
            return
        task.mark(RunOutcomeState.CANCELLED, f"cancelled: {reason}")
        task.container.exit(KILLED)
        self.host.changed()  # like dockerd's stop, it returns once the container stopped

    async def logs(self, task_id: str) -> AsyncIterator[LogChunk]:
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        async for chunk in task.tail.follow():
            yield chunk

    def _info(self, container: Container) -> ContainerInfo:
        spec = container.spec
        return ContainerInfo(
            container_id=f"fake-{container.node_id}-{spec.task_id}", name=f"peerd-{container.node_id}-{spec.task_id}",
            node_id=container.node_id, task_id=spec.task_id, state=container.state, image=spec.image,
            cpus=spec.cpus, memory=spec.memory, gpus=spec.gpus,
            deadline=container.started_at + spec.timeout,
        )

    async def inspect(self, task_id: str) -> ContainerInfo | None:
        self._running()
        check_name("task id", task_id)
        await trio.lowlevel.checkpoint()
        container = self.host.containers.get(task_id)
        return self._info(container) if container is not None and container.node_id == self.node_id else None

    async def list_owned(self) -> list[ContainerInfo]:
        self._running()
        await trio.lowlevel.checkpoint()
        return [self._info(c) for c in self.host.containers.values() if c.node_id == self.node_id]

    async def discard(self, task_id: str) -> None:
        if task_id in self._tasks or task_id in self._starting:
            raise ExecutorError(Reason.TASK_EXISTS, f"task {task_id!r} is still running here")
        check_name("task id", task_id)
        await trio.lowlevel.checkpoint()
        self.host.discarded.append(task_id)
        self.host.changed()  # the runner discards after it released the job: waiters on that wake here

    def running(self) -> set[str]:
        return set(self._tasks)

    # ---- recovery ---------------------------------------------------------------------
    async def recover(self, tracked: set[str]) -> RecoveryReport:
        nursery = self._running()
        for task_id in tracked:
            check_name("task id", task_id)
        plan = plan_recovery(await self.list_owned(), node_id=self.node_id, tracked=set(tracked),
                             active=set(self._tasks) | self._starting)
        for info in plan.remove:
            container = self.host.containers.pop(info.task_id)
            container.gone.set()
        for info in plan.reattach:
            self._supervise(nursery, self.host.containers[info.task_id])
        finished: list[RunOutcome] = []
        for info in plan.collect:
            task = _Task(container=self.host.containers.pop(info.task_id), tail=LogTail(self._log_limit))
            self._pump_now(task)
            finished.append(self._outcome(task))
        for task_id in plan.missing:
            lost = self._missing(task_id)
            finished.append(self._outcome(lost))
        self.host.changed()
        return RecoveryReport(
            reattached=tuple(i.task_id for i in plan.reattach),
            finished=tuple(finished),
            removed=tuple(i.task_id for i in plan.remove),
        )

    def _missing(self, task_id: str) -> _Task:
        spec = RunSpec(task_id=task_id, image="unknown", cpus=1.0, memory=64 << 20, timeout=1.0)
        now = self._clock()
        container = Container(spec=spec, node_id=self.node_id, script=Script(), deadline=0.0, started_at=now)
        task = _Task(container=container, tail=LogTail(self._log_limit))
        task.mark(RunOutcomeState.LOST, "no container after restart")
        return task


_typed: Callable[[str], Executor] = FakeExecutor  # mypy: the fake must satisfy the Executor protocol

__all__ = ["Container", "FakeExecutor", "FakeHost", "Script"]
