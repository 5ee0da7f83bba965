"""The NVML adapter: the only module that imports ``pynvml`` (from nvidia-ml-py).

``NvmlSource.read()`` is blocking and returns the host's GPUs; ``read_gpus``
runs it in a worker thread. A host without the NVIDIA driver (NVML library not
found, or any NVML init error) has no GPUs: that is an answer, not an error.

``FakeNvml`` is the honest fake used where no real GPU exists (tests, demos):
same interface, same types, plausible values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Protocol

import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it. Memory in bytes, utilisation in percent."""

    index: int
    uuid: str  # "GPU-xxxxxxxx-...": the identity used for leases and pinning
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_total: int
    memory_free: int
    utilization: int | None  # None where the device does not report it
    driver_version: str
    compute_capability: str  # "9.0"


class NvmlSource(Protocol):
    def read(self) -> list[GpuInfo]:
        """Blocking. The GPUs now; [] when the host has none (or no driver)."""
        ...


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SystemNvml:
    """The host's GPUs through NVML. Every call initialises and shuts NVML down again."""

    def read(self) -> list[GpuInfo]:
        gpus, problem = self.diagnose()
        if problem:
            log.info("NVML: %s: reporting no GPUs", problem)
        return gpus

    def diagnose(self) -> tuple[list[GpuInfo], str | None]:
        """Blocking. (GPUs, problem): no driver at all is no problem, just no GPUs; a driver
        whose NVML fails (version mismatch, device lost...) is a problem worth reporting."""
        try:
            import pynvml
        except ImportError:
            return [], None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            return [], None
        except pynvml.NVMLError as exc:
            return [], f"NVML init failed: {exc}"
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            return [self._device(pynvml, i, driver) for i in range(pynvml.nvmlDeviceGetCount())], None
        except pynvml.NVMLError as exc:
            return [], f"NVML failed while reading devices: {exc}"
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown failed: %s", exc)

    @staticmethod
    def _device(nv: ModuleType, index: int, driver: str) -> GpuInfo:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        try:
            utilization: int | None = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nv.NVMLError:
            utilization = None
        return GpuInfo(
            index=index,
            uuid=_text(nv.nvmlDeviceGetUUID(handle)),
            name=_text(nv.nvmlDeviceGetName(handle)),
            memory_total=int(memory.total),
            memory_free=int(memory.free),
            utilization=utilization,
            driver_version=driver,
            compute_capability=f"{major}.{minor}",
        )


H100 = GpuInfo(
    index=0,
    uuid="GPU-00000000-0000-4000-8000-000000000000",
    name="NVIDIA H100 80GB HBM3",
    memory_total=85_520_809_984,
    memory_free=84_929_413_120,
    utilization=0,
    driver_version="550.54.15",
    compute_capability="9.0",
)


class FakeNvml:
    """An honest fake NVML: returns the GPUs it was given, like the real adapter would."""

    def __init__(self, gpus: list[GpuInfo]) -> None:
        self._gpus = list(gpus)

    @classmethod
    def identical(cls, count: int, model: GpuInfo = H100, *, seed: int = 0) -> FakeNvml:
        """``count`` GPUs like ``model``, indexed 0.., with distinct, well-formed UUIDs."""
        return cls(
            [
                replace(model, index=i, uuid=f"GPU-{seed:08x}-{i:04x}-4000-8000-{i:012x}")
                for i in range(count)
            ]
        )

    def read(self) -> list[GpuInfo]:
        return list(self._gpus)


async def read_gpus(source: NvmlSource | None = None) -> list[GpuInfo]:
    """The GPUs from ``source`` (the host's NVML by default), read in a worker thread."""
    return await trio.to_thread.run_sync((source or SystemNvml()).read)


async def diagnose_gpus(source: NvmlSource | None = None) -> tuple[list[GpuInfo], str | None]:
    """The GPUs and, for the host's NVML, why it fails if it does (a fake never fails)."""
    if source is None:
        return await trio.to_thread.run_sync(SystemNvml().diagnose)
    return await trio.to_thread.run_sync(source.read), None
