"""Pure translation between a RunSpec and what dockerd is told / reports. No I/O.

``plan_container`` turns a spec into the container to create, with the
isolation defaults every job gets (written as Docker Engine API JSON so the
tests read exactly what dockerd receives). ``info_from_summary`` /
``info_from_inspect`` / ``exit_from_inspect`` read containers back through the
labels this module writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from peerd.config import DEFAULT_GPU_CAPABILITIES, DEFAULT_LIMITS
from peerd.executor.contract import NOBODY, OUT_MOUNT, ContainerInfo, InputMount, RunSpec
from peerd.executor.errors import InvalidSpec
from peerd.executor.gpuaccess import CDI_KIND, GpuAccess

LABEL_NODE = "peerd.node"
LABEL_TASK = "peerd.task"
LABEL_GPUS = "peerd.gpus"
LABEL_CPUS = "peerd.cpus"
LABEL_MEMORY = "peerd.memory"
LABEL_DEADLINE = "peerd.deadline"
LABEL_HOLDER = "peerd.netholder"  # on a gang member's network holder: the node id (not peerd.node: no job)

HOLDER_COMMAND = ["sleep", "infinity"]  # the holder's entrypoint, from the job's own image
HOLDER_MEMORY = 16 * 1024 * 1024
HOLDER_PIDS = 4
HOLDER_NANO_CPUS = 50_000_000  # 0.05 CPU: it only sleeps

NO_GPUS = "void"  # NVIDIA_VISIBLE_DEVICES value that makes the NVIDIA runtime act like runc
DOCKER_SHM = 64 * 1024 * 1024  # Docker's /dev/shm, which CPU jobs keep
GPU_SHM_DIVISOR = 2  # a GPU job's /dev/shm: half its memory limit (NCCL, data-loader workers), charged to it
GPU_HOME = "/tmp"  # a GPU job's HOME unless it sets one: writable (tmpfs) under the read-only root

JsonObject = dict[str, object]


@dataclass(frozen=True)
class Limits:
    """Host-side knobs that are not part of the lease."""

    tmp_size: int = DEFAULT_LIMITS.tmpfs  # bytes of tmpfs at /tmp (charged to the memory limit)
    log_file_size: int = 4 * 1024 * 1024  # dockerd's own json log, per container (bounded disk)
    gpu_capabilities: tuple[str, ...] = DEFAULT_GPU_CAPABILITIES  # NVIDIA_DRIVER_CAPABILITIES of a GPU job


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    command: list[str] | None  # None: the image's default command
    environment: dict[str, str]
    user: str | None
    labels: dict[str, str]
    host_config: JsonObject  # Docker Engine API "HostConfig"
    entrypoint: list[str] | None = None  # None: the image's own


def container_name(node_id: str, task_id: str) -> str:
    return f"peerd-{node_id}-{task_id}"


def holder_name(node_id: str, task_id: str) -> str:
    return f"{container_name(node_id, task_id)}-net"


def plan_container(
    spec: RunSpec, *, node_id: str, out_dir: Path, deadline: float, limits: Limits = Limits(),
    network_of: str | None = None, gpu_access: GpuAccess = GpuAccess.HOOK, device_variables: tuple[str, ...] = (),
) -> ContainerPlan:
    """``network_of``: the holder container whose network namespace (the overlay) the job joins;
    ``gpu_access``: how this dockerd gives containers GPUs (``peerd.executor.gpuaccess``);
    ``device_variables``: the toolkit's swarm-resource variables, which it reads before NVIDIA_VISIBLE_DEVICES."""
    environment = {**spec.environment, **gpu_job_home(spec), **gpu_environment(spec, limits, device_variables)}
    labels = {
        LABEL_NODE: node_id,
        LABEL_TASK: spec.task_id,
        LABEL_GPUS: ",".join(spec.gpus),
        LABEL_CPUS: repr(float(spec.cpus)),
        LABEL_MEMORY: str(spec.memory),
        LABEL_DEADLINE: repr(float(deadline)),
    }
    return ContainerPlan(
        name=container_name(node_id, spec.task_id),
        image=spec.image_id or spec.image,  # a carried image: by its id, nothing else
        command=list(spec.command) or None,
        environment=environment,
        user=spec.user,
        labels=labels,
        host_config=host_config(spec, out_dir=out_dir, limits=limits, network_of=network_of, gpu_access=gpu_access),
    )


def gpu_environment(spec: RunSpec, limits: Limits, device_variables: tuple[str, ...] = ()) -> dict[str, str]:
    """What the NVIDIA toolkit reads, set by the executor over the image's own ENV (the job may set none of
    it): exactly the leased GPUs (none: ``void``), in NVIDIA_VISIBLE_DEVICES and in any swarm-resource
    variable the toolkit reads first, and, for a GPU job, the configured driver capabilities."""
    devices = ",".join(spec.gpus) if spec.gpus else NO_GPUS
    env = {name: devices for name in (*device_variables, "NVIDIA_VISIBLE_DEVICES")}
    if spec.gpus:
        env["NVIDIA_DRIVER_CAPABILITIES"] = ",".join(limits.gpu_capabilities)
    return env


def gpu_job_home(spec: RunSpec) -> dict[str, str]:
    """A GPU job's caches (CUDA's JIT cache in ~/.nv, torch.compile's and Triton's, pip's) need a writable HOME;
    the root is read-only and user 65534 has none, so HOME is /tmp (a bounded tmpfs) unless the job sets it."""
    own = spec.environment
    if not spec.gpus or "HOME" in own:
        return {}
    return {"HOME": GPU_HOME, **({} if "XDG_CACHE_HOME" in own else {"XDG_CACHE_HOME": f"{GPU_HOME}/.cache"})}


def plan_holder(spec: RunSpec, *, node_id: str, limits: Limits = Limits()) -> ContainerPlan:
    """The container that holds a gang member's network namespace (Kubernetes' pause pattern):
    dockerd cannot join a namespace it did not make, so the overlay interface is moved into this
    one's and the job joins it (``network_of``). It sleeps, with every isolation default."""
    return ContainerPlan(
        name=holder_name(node_id, spec.task_id),
        image=spec.image_id or spec.image,  # the holder runs the job's own image, by id when carried
        command=None,
        environment={"NVIDIA_VISIBLE_DEVICES": NO_GPUS},
        user=NOBODY,
        labels={LABEL_HOLDER: node_id, LABEL_TASK: spec.task_id},
        host_config={
            "NetworkMode": network_mode(spec, holder=True),
            **_isolation(limits),
            "Memory": HOLDER_MEMORY,
            "MemorySwap": HOLDER_MEMORY,
            "NanoCpus": HOLDER_NANO_CPUS,
            "PidsLimit": HOLDER_PIDS,
        },
        entrypoint=HOLDER_COMMAND,
    )


def network_mode(spec: RunSpec, *, network_of: str | None = None, holder: bool = False) -> str:
    """The one place that decides a container's network. A gang member (``spec.overlay``) joins
    its holder's namespace, which has nothing but lo until the overlay interface is moved in."""
    if spec.overlay is not None and not holder:
        if network_of is None:
            raise InvalidSpec("a gang member's container needs its network holder")
        return f"container:{network_of}"
    if holder or not spec.network:
        return "none"
    return "bridge"


def _isolation(limits: Limits) -> JsonObject:
    return {
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "ReadonlyRootfs": True,
        "IpcMode": "private",
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_size},mode=1777"},
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": str(limits.log_file_size), "max-file": "2"},
        },
    }


def host_config(
    spec: RunSpec, *, out_dir: Path, limits: Limits, network_of: str | None = None,
    gpu_access: GpuAccess = GpuAccess.HOOK,
) -> JsonObject:
    config: JsonObject = {
        "NetworkMode": network_mode(spec, network_of=network_of),
        **_isolation(limits),
        "Mounts": [
            {"Type": "bind", "Source": str(out_dir), "Target": OUT_MOUNT, "ReadOnly": False},
            *(input_mount(i) for i in spec.inputs),
        ],
        "Memory": spec.memory,
        "MemorySwap": spec.memory,  # == Memory: no swap, exceeding the limit OOM-kills
        "NanoCpus": int(round(spec.cpus * 1e9)),
        "PidsLimit": spec.pids,
    }
    if spec.gpus:
        config.update(gpu_request(spec.gpus, gpu_access))
        config["ShmSize"] = gpu_shm_size(spec.memory)
    return config


def gpu_shm_size(memory: int) -> int:
    """/dev/shm of a GPU job: Docker's 64 MB crashes NCCL and PyTorch data-loader workers, so it scales with
    the job's memory limit (tmpfs pages are charged to that limit: it is room, not extra memory)."""
    return max(DOCKER_SHM, memory // GPU_SHM_DIVISOR)


def gpu_request(gpus: tuple[str, ...], access: GpuAccess) -> JsonObject:
    """The HostConfig fields that give a container exactly ``gpus`` (UUIDs) in the form this host takes.
    HOOK: ``docker run --gpus`` (capability ``gpu`` only: Docker before 26 matches no other NVIDIA capability,
    which ``NVIDIA_DRIVER_CAPABILITIES`` sets instead); CDI: ``--device nvidia.com/gpu=<UUID>``; RUNTIME:
    ``--runtime nvidia`` with NVIDIA_VISIBLE_DEVICES (in the environment)."""
    if access is GpuAccess.RUNTIME:
        return {"Runtime": "nvidia"}
    if access is GpuAccess.CDI:
        request = {"Driver": "cdi", "Count": 0, "DeviceIDs": [f"{CDI_KIND}={g}" for g in gpus],
                   "Capabilities": [], "Options": {}}
    else:
        request = {"Driver": "", "Count": 0, "DeviceIDs": list(gpus), "Capabilities": [["gpu"]], "Options": {}}
    return {"DeviceRequests": [request]}


def input_mount(mount: InputMount) -> JsonObject:
    """Read-only, and not recursive: a mount that appears below the source later stays out. Docker
    offers no nosuid/nodev for binds; no-new-privileges voids setuid, and staged inputs hold only
    regular files (peerd.data.staging)."""
    return {
        "Type": "bind", "Source": str(mount.source), "Target": mount.target, "ReadOnly": True,
        "BindOptions": {"NonRecursive": True},
    }


def _label_float(labels: dict[str, str], key: str) -> float | None:
    try:
        return float(labels[key])
    except (KeyError, ValueError):
        return None


def _info(container_id: str, name: str, image: str, state: str, labels: dict[str, str]) -> ContainerInfo:
    gpus = labels.get(LABEL_GPUS, "")
    return ContainerInfo(
        container_id=container_id,
        name=name.lstrip("/"),
        node_id=labels.get(LABEL_NODE, ""),
        task_id=labels.get(LABEL_TASK, ""),
        state=state,
        image=image,
        cpus=_label_float(labels, LABEL_CPUS) or 0.0,
        memory=int(_label_float(labels, LABEL_MEMORY) or 0),
        gpus=tuple(g for g in gpus.split(",") if g),
        deadline=_label_float(labels, LABEL_DEADLINE),
    )


def info_from_summary(summary: JsonObject) -> ContainerInfo:
    """From one entry of GET /containers/json."""
    names = summary.get("Names") or [""]
    return _info(
        str(summary["Id"]),
        str(names[0]) if isinstance(names, list) else "",
        str(summary.get("Image", "")),
        str(summary.get("State", "")),
        _labels(summary.get("Labels")),
    )


def info_from_inspect(details: JsonObject) -> ContainerInfo:
    """From GET /containers/{id}/json."""
    config = details.get("Config")
    state = details.get("State")
    config = config if isinstance(config, dict) else {}
    state = state if isinstance(state, dict) else {}
    return _info(
        str(details["Id"]),
        str(details.get("Name", "")),
        str(config.get("Image", "")),
        str(state.get("Status", "")),
        _labels(config.get("Labels")),
    )


def _labels(raw: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


@dataclass(frozen=True)
class ExitState:
    """How a container ended, from its inspect data."""

    status: str
    exit_code: int | None
    oom_killed: bool
    started_at: float | None
    finished_at: float | None
    error: str


def exit_from_inspect(details: JsonObject) -> ExitState:
    state = details.get("State")
    state = state if isinstance(state, dict) else {}
    code = state.get("ExitCode")
    return ExitState(
        status=str(state.get("Status", "")),
        exit_code=code if isinstance(code, int) else None,
        oom_killed=bool(state.get("OOMKilled", False)),
        started_at=parse_timestamp(state.get("StartedAt")),
        finished_at=parse_timestamp(state.get("FinishedAt")),
        error=str(state.get("Error") or ""),
    )


def parse_timestamp(raw: object) -> float | None:
    """Docker's RFC 3339 with nanoseconds ("...T12:00:00.123456789Z"); zero time -> None."""
    if not isinstance(raw, str) or not raw or raw.startswith("0001-"):
        return None
    text = raw.replace("Z", "+00:00")
    head, _, rest = text.partition(".")
    if rest:  # keep microseconds, drop nanoseconds; keep the offset
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
