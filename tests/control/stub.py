"""A small in-memory ``NodeOps`` for tests about the control socket and the CLI.

These tests are about the socket and the command line, not about the node, so
the node is a stub: tasks live in a dict, ``submit`` finishes a task at once
unless its command starts with ``hang`` (then it waits for ``finish``), a
command starting with ``false`` fails with exit code 1. Every call is recorded
in ``calls`` as ``(operation, arguments)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import trio

from peerd.control.ops import (
    NODE_DEFAULT,
    CancelView,
    DoctorCheck,
    DrainView,
    EventView,
    LogChunkView,
    OpError,
    PeerHistoryView,
    PeerNotFound,
    PeerView,
    Queueing,
    QueueView,
    ReceiptView,
    ReputationView,
    StatusView,
    TaskNotFound,
    TaskView,
)
from protocol.messages import JobSpec
from protocol.schema import Value

PEER_ID = "12D3KooWStubStubStubStubStubStubStubStubStubStub"
PROVIDER = "12D3KooWProviderProviderProviderProviderProvide"
REPUTATION: ReputationView = {"score": 0.75, "newcomer": False, "distrusted": False,
                              "counts": {"completed": 2, "leased": 2}, "latency": 0.25, "last_at": 1700000100.0}


class _Task:
    def __init__(self, task_id: str, spec: JobSpec, local: bool) -> None:
        self.task_id = task_id
        self.spec = spec
        self.local = local
        self.state = "running"
        self.exit_code: int | None = None
        self.stdout = b""
        self.stderr = b""
        self.done = trio.Event()
        self.output = trio.Event()  # set whenever output was added
        self.queue: QueueView | None = None  # a queued task's place (state "queued")

    def finish(self, exit_code: int, stdout: bytes, stderr: bytes = b"") -> None:
        self.stdout += stdout
        self.stderr += stderr
        self.exit_code = exit_code
        self.state = "succeeded" if exit_code == 0 else "failed"
        self.done.set()
        self.output.set()

    def view(self) -> TaskView:
        receipt: ReceiptView | None = None
        if self.done.is_set():
            receipt = {"task_id": self.task_id, "provider": PROVIDER, "requester": PEER_ID,
                       "cost": 0.25, "state": self.state, "verified": True, "cosigned": "8a01"}
        view: TaskView = {
            "task_id": self.task_id, "state": self.state, "exit_code": self.exit_code,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "provider": PROVIDER,
            "attempts": [{"provider": PROVIDER, "outcome": self.state, "reason": "", "detail": ""}],
            "receipt": receipt, "created_at": 1700000000.0, "updated_at": 1700000001.0,
            "spec": self.spec.to_wire(), "role": "requester", "detail": "",
        }
        if self.queue is not None:
            view["queue"] = self.queue
        return view


class StubOps:
    """Implements ``peerd.control.ops.NodeOps`` in memory."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []
        self.tasks_by_id: dict[str, _Task] = {}
        self.doctor_ok = True
        self.waiters = 0
        self.waiter_joined = trio.Event()
        self.follow_closed = trio.Event()
        self._called = trio.Event()

    def _record(self, op: str, args: dict[str, object]) -> None:
        self.calls.append((op, args))
        self._called.set()

    async def called(self, op: str) -> None:
        """Return once ``op`` has been called."""
        while not any(name == op for name, _ in self.calls):
            self._called = trio.Event()
            await self._called.wait()

    def _get(self, task_id: str) -> _Task:
        if task_id == "boom":
            raise RuntimeError("a bug in the node")
        try:
            return self.tasks_by_id[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    async def status(self) -> StatusView:
        self._record("status", {})
        return {"peer_id": PEER_ID, "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"],
                "role": "provider", "peers_connected": 2, "peers_known": 3, "tasks_running": 1,
                "tasks_queued": 0, "version": "0.1.0", "counters": {"adverts_in": 7},
                "draining": False}

    async def peers(self) -> list[PeerView]:
        self._record("peers", {})
        advert = {"gpus": [{"uuid": "GPU-1", "model": "H100", "memory": 80 << 30,
                            "compute_capability": "9.0"}],
                  "cpus": 8.0, "free_cpus": 6.0, "price_cpu_hour": 0.01, "price_gpu_hour": 0.5,
                  "expires_at": 1700000300.0}
        return [{"peer_id": PROVIDER, "addrs": ["/ip4/127.0.0.1/tcp/4002"], "advert": advert,
                 "reputation": REPUTATION}]

    async def peer(self, peer_id: str, limit: int) -> PeerHistoryView:
        self._record("peer", {"peer_id": peer_id, "limit": limit})
        if peer_id != PROVIDER:
            raise PeerNotFound(peer_id)
        history = [{"event": "completed", "task_id": "t0123456789abcdef", "at": 1700000100.0, "latency": None},
                   {"event": "leased", "task_id": "t0123456789abcdef", "at": 1700000000.0, "latency": 0.25}]
        return {"peer_id": PROVIDER, "addrs": [], "advert": None, "reputation": REPUTATION,
                "history": history[:limit]}  # type: ignore[typeddict-item]

    async def submit(
        self, spec: JobSpec, *, local: bool, inputs: Sequence[tuple[str, str]] = (), replicas: int = 1,
        spot_check: float = 0.0, image_from_requester: bool = False, queue: Queueing = NODE_DEFAULT,
    ) -> str:
        extra: dict[str, object] = {"inputs": list(inputs)} if inputs else {}  # only what differs from defaults
        if replicas > 1:
            extra["replicas"] = replicas
        if spot_check:
            extra["spot_check"] = spot_check
        if image_from_requester:
            extra["image_from_requester"] = True
        if queue != NODE_DEFAULT:
            extra["queue"] = queue
        self._record("submit", {"spec": spec, "local": local, **extra})
        task = _Task(f"t{len(self.tasks_by_id) + 1:04d}", spec, local)
        self.tasks_by_id[task.task_id] = task
        program = spec.command[0] if spec.command else ""
        if program == "false":
            task.finish(1, b"", b"it failed\n")
        elif program != "hang":
            task.finish(0, " ".join(spec.command[1:]).encode() + b"\n")
        return task.task_id

    async def wait(self, task_id: str) -> TaskView:
        self._record("wait", {"task_id": task_id})
        task = self._get(task_id)
        self.waiters += 1
        self.waiter_joined.set()
        await task.done.wait()
        return task.view()

    async def task(self, task_id: str) -> TaskView | None:
        self._record("task", {"task_id": task_id})
        task = self.tasks_by_id.get(task_id)
        if task_id == "boom":
            raise RuntimeError("a bug in the node")
        return None if task is None else task.view()

    async def tasks(self, limit: int) -> list[TaskView]:
        self._record("tasks", {"limit": limit})
        return [t.view() for t in reversed(list(self.tasks_by_id.values()))][:limit]

    async def outputs(self, task_id: str) -> AsyncIterator[dict[str, Value]]:
        self._record("outputs", {"task_id": task_id})
        self._get(task_id)
        yield {"manifest": b"", "id": "", "size": 0, "files": 0, "fetched": 0}

    async def logs(self, task_id: str, follow: bool) -> AsyncIterator[LogChunkView]:
        self._record("logs", {"task_id": task_id, "follow": follow})
        task = self._get(task_id)
        sent = 0
        try:
            while True:
                if len(task.stdout) > sent:
                    chunk = task.stdout[sent:]
                    sent = len(task.stdout)
                    yield {"stream": "stdout", "data": chunk}
                    continue  # output may have come while we were suspended
                if not follow or task.done.is_set():
                    return
                task.output = trio.Event()
                await task.output.wait()
        finally:
            self.follow_closed.set()

    async def events(self, task_id: str) -> AsyncIterator[EventView]:
        self._record("events", {"task_id": task_id})
        task = self._get(task_id)
        yield {"task_id": task_id, "state": "placing", "detail": "", "at": 1700000000.0}
        await task.done.wait()
        yield {"task_id": task_id, "state": task.state, "detail": "", "at": 1700000001.0}

    async def cancel(self, task_id: str) -> CancelView:
        self._record("cancel", {"task_id": task_id})
        if task_id == "refuse":
            raise OpError("cannot cancel a task that is leased to us")
        task = self._get(task_id)
        if not task.done.is_set():
            task.state = "cancelled"
            task.done.set()
        return {"task_id": task_id, "state": task.state, "detail": "cancel requested"}

    async def receipts(self, limit: int) -> list[ReceiptView]:
        self._record("receipts", {"limit": limit})
        views = [t.view()["receipt"] for t in self.tasks_by_id.values()]
        return [r for r in views if r is not None][:limit]

    async def doctor(self) -> list[DoctorCheck]:
        self._record("doctor", {})
        return [{"name": "docker", "ok": True, "detail": "27.0 reachable"},
                {"name": "identity", "ok": self.doctor_ok, "detail": "node.key mode 0600"}]

    async def drain(self) -> DrainView:
        self._record("drain", {})
        return {"draining": True, "tasks_running": 1, "detail": "waiting for 1 task"}

    # ------------------------------------------------------------ test controls
    def add_task(self, command: tuple[str, ...]) -> _Task:
        spec = JobSpec(image="peerd-test/busybox:1", command=command)
        task = _Task(f"t{len(self.tasks_by_id) + 1:04d}", spec, False)
        self.tasks_by_id[task.task_id] = task
        return task

    def add_output(self, task_id: str, data: bytes) -> None:
        task = self.tasks_by_id[task_id]
        task.stdout += data
        task.output.set()
