"""The host's inventory: CPUs, memory, disk, Docker and GPUs, as one snapshot.

``snapshot`` reads everything concurrently, each blocking source in a worker
thread: psutil here, NVML through ``peerd.host.nvml`` (no driver = no GPUs) and
dockerd through the executor's engine adapter (unreachable = ``docker=False``).
It never raises for a missing part; the inventory says what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from peerd.executor.engine import EngineInfo, inspect_engine
from peerd.executor.gpuaccess import NO_SUPPORT, GpuSupport, decide, probe_toolkit
from peerd.host.nvml import GpuInfo, NvmlSource, read_gpus

__all__ = ["GpuInfo", "Inventory", "snapshot"]


@dataclass(frozen=True)
class Inventory:
    cpus: int  # logical CPUs this process may use
    memory: int  # bytes of RAM in total
    memory_available: int  # bytes available now
    disk_free: int  # bytes free on the filesystem holding ``home``
    docker: bool  # dockerd reachable
    docker_version: str | None
    docker_detail: str  # why docker is False ("" otherwise)
    gpu_support: GpuSupport  # whether and how dockerd can give containers GPUs (peerd.executor.gpuaccess)
    gpus: tuple[GpuInfo, ...]
    engine: EngineInfo  # everything dockerd said (cgroup limits, runtimes, ...)

    @property
    def nvidia_runtime(self) -> bool:
        return self.gpu_support.ok


@dataclass(frozen=True)
class _Host:
    cpus: int
    memory: int
    memory_available: int
    disk_free: int


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (a home not created yet still has a disk)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_free(home: Path) -> int:
    """Bytes free on the disk that holds ``home`` (or would, once created)."""
    return int(psutil.disk_usage(str(existing_ancestor(home))).free)


def _read_host(home: Path) -> _Host:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = psutil.cpu_count(logical=True) or 1
    memory = psutil.virtual_memory()
    return _Host(
        cpus=cpus,
        memory=int(memory.total),
        memory_available=int(memory.available),
        disk_free=disk_free(home),
    )


async def snapshot(
    *, home: Path, docker_url: str | None = None, nvml: NvmlSource | None = None, docker_timeout: float = 5.0
) -> Inventory:
    """What this host has now. ``nvml`` defaults to the host's NVML; pass a FakeNvml in tests."""
    facts: _Host | None = None
    devices: list[GpuInfo] = []
    info = EngineInfo(reachable=False, detail="not probed")
    support = NO_SUPPORT

    async def read_host() -> None:
        nonlocal facts
        facts = await trio.to_thread.run_sync(_read_host, home)

    async def read_devices() -> None:
        nonlocal devices
        devices = await read_gpus(nvml)

    async def read_engine() -> None:
        nonlocal info, support
        info = await inspect_engine(docker_url, timeout=docker_timeout)
        support = decide(info, await trio.to_thread.run_sync(probe_toolkit, info.cdi_spec_dirs))

    async with trio.open_nursery() as nursery:
        for reader in (read_host, read_devices, read_engine):
            nursery.start_soon(reader)
    assert facts is not None
    return Inventory(
        cpus=facts.cpus,
        memory=facts.memory,
        memory_available=facts.memory_available,
        disk_free=facts.disk_free,
        docker=info.reachable,
        docker_version=info.version,
        docker_detail=info.detail,
        gpu_support=support,
        gpus=tuple(devices),
        engine=info,
    )
