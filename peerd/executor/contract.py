"""The executor contract: what a job is, what comes back, and the operations.

``RunSpec`` is a job exactly as leased (image, command, limits, the GPU UUIDs
leased to it). ``RunOutcome`` is what happened. ``Executor`` is the protocol the
provider programs against; ``DockerExecutor`` is the implementation.

Rules every implementation keeps:
  * a task id names at most one container per node; a second start is refused;
  * ``wait`` returns exactly one RunOutcome per started task; the container is gone
    by then and its GPUs may be released by the caller;
  * ``outcome`` returns that same RunOutcome as soon as it is known: the container
    has exited (its GPUs may be released) but may still be being removed, so a
    result can go out without waiting for dockerd's clean-up; it ends nothing:
    ``wait`` is still due;
  * ``recover`` touches only containers labelled with this node's id;
  * inputs are mounted read-only; /out is bounded while the job runs, and a job
    that fills it is stopped: state FAILED, reason OUTPUT_LIMIT (the wire's
    TaskState has no such value; the detail starts with ``output_limit``);
  * /out comes back as a manifest whose chunks are pinned for the task.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, Protocol

from peerd.executor.errors import InvalidSpec, Reason
from protocol.imageref import image_ref_problem
from protocol.jobspec import reserved_env

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$")
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
MIN_MEMORY = 6 * 1024 * 1024  # dockerd refuses less
NOBODY = "65534:65534"

EnvPairs = tuple[tuple[str, str], ...]

OUT_MOUNT = "/out"
MAX_INPUTS = 16
# Where no input may be mounted (nor above): what the runtime and the kernel own, /out and /tmp.
RESERVED_PATHS = ("/proc", "/sys", "/dev", "/etc", "/run", "/tmp", OUT_MOUNT)


def check_name(kind: str, value: str) -> str:
    """Task and node ids end up in container names and host paths: keep them tame."""
    if not is_valid_name(value):
        raise InvalidSpec(f"{kind} {value!r} must match {_NAME.pattern}")
    return value


def is_valid_name(value: str) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value))


def _normalise_env(env: Mapping[str, str] | EnvPairs) -> EnvPairs:
    pairs = tuple(sorted(env.items())) if isinstance(env, Mapping) else tuple(env)
    seen: set[str] = set()
    for key, value in pairs:
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise InvalidSpec(f"bad environment variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidSpec(f"environment variable {key} must be a string without NUL")
        if reserved_env(key):  # the executor sets them (plan.py); the wire's JobSpec refuses them too
            raise InvalidSpec(f"environment variable {key} is reserved (NVIDIA_* and DOCKER_RESOURCE_* "
                              "variables are set by the executor)")
        if key in seen:
            raise InvalidSpec(f"environment variable {key} given twice")
        seen.add(key)
    return pairs


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class InputMount:
    """A host directory the caller prepared (``peerd.data.staging.materialize``), mounted read-only at
    ``target`` in the container. ``target`` is absolute and normalised, and neither inside nor
    above a reserved path (``RESERVED_PATHS``)."""

    source: Path
    target: str

    def __post_init__(self) -> None:
        if not isinstance(self.source, Path) or not self.source.is_absolute():
            raise InvalidSpec(f"input source must be an absolute host path, got {self.source!r}")
        target = self.target
        if not isinstance(target, str) or not target.startswith("/") or "\0" in target:
            raise InvalidSpec(f"input target must be an absolute container path, got {target!r:.80}")
        if posixpath.normpath(target) != target or target.startswith("//") or len(target) > 1024:
            raise InvalidSpec(f"input target {target!r:.80} is not a normalised path")
        if target == "/" or any(_within(target, r) or _within(r, target) for r in RESERVED_PATHS):
            raise InvalidSpec(f"input target {target!r:.80} is, or is in or above, a reserved path")


def _check_inputs(inputs: tuple[InputMount, ...]) -> None:
    if len(inputs) > MAX_INPUTS:
        raise InvalidSpec(f"at most {MAX_INPUTS} input mounts, got {len(inputs)}")
    if not all(isinstance(i, InputMount) for i in inputs):
        raise InvalidSpec("inputs must be InputMount values")
    for i, one in enumerate(inputs):
        for other in inputs[i + 1:]:
            if _within(one.target, other.target) or _within(other.target, one.target):
                raise InvalidSpec(f"input targets {one.target!r:.80} and {other.target!r:.80} overlap")


@dataclass(frozen=True)
class OverlayPeer:
    """Another member of this job's gang, as WireGuard sees it."""

    public_key: str  # WireGuard's base64 text form of a 32-byte X25519 public key
    endpoint: str  # "host:port": the UDP underlay address of that member's provider
    address: str  # that member's overlay IPv4 address, e.g. "10.99.0.2"


@dataclass(frozen=True, kw_only=True)
class OverlaySpec:
    """The gang's private network, as this rank's container gets it: one WireGuard interface
    and nothing else (no bridge, no host network). Built by the provider from the signed lease;
    realised by the executor (``peerd.overlay``)."""

    interface: str = "peerd0"  # the name inside the container
    address: str  # this rank's overlay address with prefix, e.g. "10.99.0.1/24"
    private_key: str  # base64 X25519 private key; never logged
    listen_port: int  # UDP port on the provider's host (the endpoint this provider signed)
    peers: tuple[OverlayPeer, ...]

    def __repr__(self) -> str:
        return f"OverlaySpec(interface={self.interface!r}, address={self.address!r}, peers={len(self.peers)})"


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One job, exactly as leased. ``env`` may be given as a mapping; it is stored as sorted pairs."""

    task_id: str
    image: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] | EnvPairs = ()
    cpus: float
    memory: int  # bytes; swap is not granted (memswap == memory)
    pids: int = 256
    gpus: tuple[str, ...] = ()  # NVML UUIDs
    network: bool = False
    timeout: float  # wall-clock seconds
    user: str | None = NOBODY
    inputs: tuple[InputMount, ...] = ()  # read-only host directories
    overlay: OverlaySpec | None = None  # a gang member: its only network (``network`` must be False)
    image_id: str = ""  # "sha256:<hex>": run exactly this image (one carried by the requester), never pull

    def __post_init__(self) -> None:
        check_name("task id", self.task_id)
        problem = image_ref_problem(self.image)
        if problem is not None:
            raise InvalidSpec(problem)
        if self.image_id and not _IMAGE_ID.fullmatch(self.image_id):
            raise InvalidSpec(f"image_id must be sha256:<64 lowercase hex digits>, got {self.image_id!r:.80}")
        object.__setattr__(self, "command", tuple(self.command))
        if not all(isinstance(arg, str) and "\0" not in arg for arg in self.command):
            raise InvalidSpec("command arguments must be strings without NUL")
        object.__setattr__(self, "env", _normalise_env(self.env))
        if not (math.isfinite(self.cpus) and self.cpus > 0):
            raise InvalidSpec(f"cpus must be > 0, got {self.cpus}")
        if self.memory < MIN_MEMORY:
            raise InvalidSpec(f"memory must be at least {MIN_MEMORY} bytes, got {self.memory}")
        if self.pids < 1:
            raise InvalidSpec(f"pids must be >= 1, got {self.pids}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise InvalidSpec(f"timeout must be > 0 seconds, got {self.timeout}")
        object.__setattr__(self, "gpus", tuple(self.gpus))
        if len(set(self.gpus)) != len(self.gpus) or not all(
            isinstance(g, str) and g and "," not in g and not g.isspace() for g in self.gpus
        ):
            raise InvalidSpec(f"gpus must be distinct NVML UUIDs, got {self.gpus!r}")
        if self.user is not None and not _USER.fullmatch(self.user):
            raise InvalidSpec(f"bad user {self.user!r}")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        _check_inputs(self.inputs)
        if self.overlay is not None and self.network:
            raise InvalidSpec("a gang member's only network is its overlay: network must be False")

    @property
    def environment(self) -> dict[str, str]:
        """The job's own environment (without the variables the executor adds)."""
        pairs: EnvPairs = self.env  # type: ignore[assignment]  # normalised in __post_init__
        return dict(pairs)


class RunOutcomeState(StrEnum):
    SUCCEEDED = "succeeded"  # exit code 0
    FAILED = "failed"  # non-zero exit code, or stopped at the output limit (reason OUTPUT_LIMIT)
    TIMEOUT = "timeout"  # killed at the wall-clock limit
    OOM = "oom"  # killed by the kernel for exceeding its memory limit
    CANCELLED = "cancelled"  # stopped on request
    LOST = "lost"  # the container vanished or could not be followed


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    task_id: str
    state: RunOutcomeState
    exit_code: int | None
    stdout: bytes  # last log_limit bytes
    stderr: bytes  # last log_limit bytes
    output_manifest: bytes | None = None  # id of /out's manifest (its chunks pinned for the task); None: empty
    output_digest: str  # output_manifest as hex; "" when /out was empty
    output_size: int  # bytes of file data in /out's manifest
    output_truncated: bool = False  # links, special files or unusable names in /out were left out
    started_at: float  # unix time
    finished_at: float
    wall_time: float
    gpu_seconds: float  # wall_time x number of GPUs
    detail: str = ""
    reason: Reason | None = None  # set where ``state`` alone does not say it: OUTPUT_LIMIT


class LogChunk(NamedTuple):
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    """A container this node owns, as recorded in its labels and state."""

    container_id: str
    name: str
    node_id: str
    task_id: str
    state: str  # docker's: created, running, exited, dead, ...
    image: str
    cpus: float
    memory: int
    gpus: tuple[str, ...]
    deadline: float | None  # unix time the time limit expires


@dataclass(frozen=True)
class RecoveryReport:
    reattached: tuple[str, ...] = ()  # tracked task ids whose container runs on; wait() works
    finished: tuple[RunOutcome, ...] = ()  # tracked tasks that ended meanwhile (state lost if no container)
    removed: tuple[str, ...] = ()  # task ids of untracked containers, stopped and removed


@dataclass(frozen=True)
class PullProgress:
    image: str
    status: str
    layer: str | None = None
    current: int | None = None
    total: int | None = None


PullListener = Callable[[PullProgress], None]


class OutputStore(Protocol):
    """Where a job's outputs go: ``peerd.data.blobstore.ChunkStore`` fits. ``pin`` before ``put``."""

    async def pin(self, task_id: str, digests: Iterable[bytes]) -> None: ...

    async def put(self, digest: bytes, data: bytes) -> bool: ...


class Executor(Protocol):
    @property
    def gpu_runtime(self) -> bool:
        """Containers can get GPUs here now (a GPU runtime that failed a start is taken back)."""
        ...

    async def image_cuda(self, image: str) -> str:
        """The CUDA version a local image asks for (NVIDIA_REQUIRE_CUDA), "" when unknown or none."""
        ...

    async def start(self, spec: RunSpec, *, on_pull: PullListener | None = None) -> None: ...

    async def wait(self, task_id: str) -> RunOutcome: ...

    async def outcome(self, task_id: str) -> RunOutcome: ...

    async def stop(self, task_id: str, reason: str) -> None: ...

    def logs(self, task_id: str) -> AsyncIterator[LogChunk]: ...

    async def inspect(self, task_id: str) -> ContainerInfo | None: ...

    async def recover(self, tracked: set[str]) -> RecoveryReport: ...

    async def list_owned(self) -> list[ContainerInfo]: ...

    async def discard(self, task_id: str) -> None: ...


__all__ = [
    "NOBODY",
    "ContainerInfo",
    "EnvPairs",
    "Executor",
    "InputMount",
    "LogChunk",
    "OutputStore",
    "PullListener",
    "PullProgress",
    "RecoveryReport",
    "RunOutcome",
    "RunOutcomeState",
    "RunSpec",
    "check_name",
    "is_valid_name",
]
