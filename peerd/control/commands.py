"""The dispatch table: control command name → handler.

Each handler reads its arguments through ``ArgReader`` (typed, with a
``bad_args`` error naming the argument), calls the node once through
``NodeOps`` and returns the result (or, for a streamed command, the node's
async iterator). The server owns the connection (and answers ``hello``
itself); this module owns what each command means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from peerd.control.ops import BadArgs, NodeOps, Queueing, TaskNotFound
from protocol.errors import DecodeError
from protocol.jobspec import MAX_INPUTS
from protocol.limits import MAX_TIMEOUT
from protocol.messages import JobSpec
from protocol.schema import Value

MAX_LIMIT = 1000  # a list result must stay under the codec's 1024 items
DEFAULT_LIMIT = 50
MAX_TASK_ID = 64
MAX_PEER_ID = 128
MAX_REPLICAS = 9
MAX_PRIORITY = 1000


class ArgReader:
    """Typed access to a request's ``args``; ``done()`` rejects leftovers."""

    def __init__(self, args: dict[str, Value]) -> None:
        self._args = args
        self._read: set[str] = set()

    def _take(self, name: str) -> Value:
        self._read.add(name)
        return self._args.get(name)

    def text(self, name: str, *, max_len: int = 256) -> str:
        value = self._take(name)
        if not isinstance(value, str) or not value:
            raise BadArgs(f"{name!r} must be a non-empty string")
        if len(value) > max_len:
            raise BadArgs(f"{name!r} is longer than {max_len} characters")
        return value

    def integer(self, name: str, *, default: int, lo: int, hi: int) -> int:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise BadArgs(f"{name!r} must be an integer in [{lo}, {hi}]")
        return value

    def number(self, name: str, *, default: float, lo: float, hi: float) -> float:
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise BadArgs(f"{name!r} must be a number in [{lo:g}, {hi:g}]")
        return float(value)

    def flag(self, name: str, *, default: bool = False) -> bool:
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadArgs(f"{name!r} must be true or false")
        return value

    def task_id(self) -> str:
        return self.text("task_id", max_len=MAX_TASK_ID)

    def limit(self) -> int:
        return self.integer("limit", default=DEFAULT_LIMIT, lo=1, hi=MAX_LIMIT)

    def job_spec(self, name: str) -> JobSpec:
        value = self._take(name)
        try:
            return JobSpec.from_wire(value, name)
        except DecodeError as exc:
            raise BadArgs(str(exc)) from exc

    def inputs(self, name: str) -> list[tuple[str, str]]:
        """``[{"source": absolute local path, "dest": container path}, ...]`` (absent: none)."""
        value = self._take(name)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > MAX_INPUTS:
            raise BadArgs(f"{name!r} must be a list of at most {MAX_INPUTS} inputs")
        out = []
        for item in value:
            if not isinstance(item, dict) or set(item) != {"source", "dest"}:
                raise BadArgs(f"each of {name!r} must be a map with 'source' and 'dest'")
            source, dest = item["source"], item["dest"]
            if not isinstance(source, str) or not source.startswith("/") or not isinstance(dest, str) or not dest:
                raise BadArgs(f"an input needs an absolute 'source' path and a 'dest', got {item!r:.200}")
            out.append((source, dest))
        return out

    def done(self) -> None:
        extra = sorted(set(self._args) - self._read)
        if extra:
            raise BadArgs(f"unexpected arguments: {', '.join(extra)}")


Unary = Callable[[NodeOps, ArgReader], Awaitable[object]]
Streamed = Callable[[NodeOps, ArgReader], AsyncIterator[object]]


@dataclass(frozen=True, slots=True)
class Command:
    """A command is either unary (``call``) or streamed (``stream``)."""

    call: Unary | None = None
    stream: Streamed | None = None


# ---------------------------------------------------------------- handlers
async def _status(ops: NodeOps, a: ArgReader) -> object:
    a.done()
    return await ops.status()


async def _peers(ops: NodeOps, a: ArgReader) -> object:
    a.done()
    return await ops.peers()


async def _peer(ops: NodeOps, a: ArgReader) -> object:
    peer_id = a.text("peer_id", max_len=MAX_PEER_ID)
    limit = a.limit()
    a.done()
    return await ops.peer(peer_id, limit)


async def _submit(ops: NodeOps, a: ArgReader) -> object:
    spec = a.job_spec("spec")
    local = a.flag("local")
    inputs = a.inputs("inputs")
    replicas = a.integer("replicas", default=1, lo=1, hi=MAX_REPLICAS)
    spot_check = a.number("spot_check", default=0.0, lo=0.0, hi=1.0)
    carry = a.flag("image_from_requester")
    wait = a.number("queue_timeout", default=-1.0, lo=0.0, hi=MAX_TIMEOUT)  # absent: the node's default
    queue = Queueing(timeout=None if wait < 0 else wait,
                     priority=a.integer("priority", default=0, lo=-MAX_PRIORITY, hi=MAX_PRIORITY))
    a.done()
    if replicas > 1 and spot_check:
        raise BadArgs("'replicas' and 'spot_check' are two ways to verify: give one")
    if spec.nodes > 1 and (local or replicas > 1 or spot_check):
        raise BadArgs("a gang job (nodes > 1) runs on distinct providers: not with 'local', 'replicas' "
                      "or 'spot_check'")
    if (replicas > 1 or spot_check) and (local or inputs):
        raise BadArgs("verification needs distinct providers and no 'inputs': not with 'local' or 'inputs' (yet)")
    if carry and local:
        raise BadArgs("'image_from_requester' carries an image to another node: not with 'local'")
    task_id = await ops.submit(spec, local=local, inputs=inputs, replicas=replicas, spot_check=spot_check,
                               image_from_requester=carry, queue=queue)
    return {"task_id": task_id}


async def _wait(ops: NodeOps, a: ArgReader) -> object:
    task_id = a.task_id()
    a.done()
    return await ops.wait(task_id)


async def _task(ops: NodeOps, a: ArgReader) -> object:
    task_id = a.task_id()
    a.done()
    view = await ops.task(task_id)
    if view is None:
        raise TaskNotFound(task_id)
    return view


async def _tasks(ops: NodeOps, a: ArgReader) -> object:
    limit = a.limit()
    a.done()
    return await ops.tasks(limit)


async def _cancel(ops: NodeOps, a: ArgReader) -> object:
    task_id = a.task_id()
    a.done()
    return await ops.cancel(task_id)


async def _receipts(ops: NodeOps, a: ArgReader) -> object:
    limit = a.limit()
    a.done()
    return await ops.receipts(limit)


async def _doctor(ops: NodeOps, a: ArgReader) -> object:
    a.done()
    return await ops.doctor()


async def _drain(ops: NodeOps, a: ArgReader) -> object:
    a.done()
    return await ops.drain()


def _logs(ops: NodeOps, a: ArgReader) -> AsyncIterator[object]:
    task_id = a.task_id()
    follow = a.flag("follow")
    a.done()
    return ops.logs(task_id, follow)


def _outputs(ops: NodeOps, a: ArgReader) -> AsyncIterator[object]:
    task_id = a.task_id()
    a.done()
    return ops.outputs(task_id)


def _events(ops: NodeOps, a: ArgReader) -> AsyncIterator[object]:
    task_id = a.task_id()
    a.done()
    return ops.events(task_id)


COMMANDS: dict[str, Command] = {
    "status": Command(call=_status),
    "peers": Command(call=_peers),
    "peer": Command(call=_peer),
    "submit": Command(call=_submit),
    "wait": Command(call=_wait),
    "task": Command(call=_task),
    "tasks": Command(call=_tasks),
    "logs": Command(stream=_logs),
    "events": Command(stream=_events),
    "outputs": Command(stream=_outputs),
    "cancel": Command(call=_cancel),
    "receipts": Command(call=_receipts),
    "doctor": Command(call=_doctor),
    "drain": Command(call=_drain),
}
