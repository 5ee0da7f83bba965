"""The NVML adapter: the only module that imports ``pynvml`` (from nvidia-ml-py).

``NvmlSource.read()`` is blocking and returns the host's GPUs; ``read_gpus``
runs it in a worker thread. A host without the NVIDIA driver (NVML library not
found, kernel module not loaded) has no GPUs: that is an answer, not an error.
Each device is read on its own (one that fails is left out and reported), and a
GPU in MIG mode is offered as its MIG devices.

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
    """One GPU (or one MIG device) as NVML reports it. Memory in bytes, utilisation in percent."""

    index: int  # NVML's device index (a MIG device: its parent's)
    uuid: str  # "GPU-xxxxxxxx-..." or "MIG-...": the identity used for leases and pinning
    name: str  # e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
    memory_total: int  # 0 where NVML does not report it (unified-memory systems)
    memory_free: int
    utilization: int | None  # None where the device does not report it
    driver_version: str
    compute_capability: str  # "9.0"; "" where NVML does not say
    cuda_version: str = ""  # the CUDA version the driver supports, "12.4"; "" where NVML does not say
    parent: str = ""  # a MIG device: its GPU's UUID


@dataclass(frozen=True)
class NvmlReport:
    """One read of NVML: the GPUs it could read, and what went wrong with the others (in words)."""

    gpus: tuple[GpuInfo, ...] = ()
    problems: tuple[str, ...] = ()  # one per device NVML failed on, or NVML as a whole
    remarks: tuple[str, ...] = ()  # facts worth saying that are no failure (MIG devices offered instead of a GPU)

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None


class NvmlSource(Protocol):
    def read(self) -> list[GpuInfo]:
        """Blocking. The GPUs now; [] when the host has none (or no driver)."""
        ...


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cuda(version: int) -> str:
    """NVML's CUDA driver version (12040) as text ("12.4")."""
    return f"{version // 1000}.{version % 1000 // 10}"


class SystemNvml:
    """The host's GPUs through NVML, each device read on its own: one device NVML fails on (no permission,
    fallen off the bus) is reported and left out, the others are kept. A MIG-enabled GPU is offered as its MIG
    devices (each with its own UUID and memory), never as a whole. ``nv`` is the pynvml module (a fake in tests).
    Every read initialises and shuts NVML down again."""

    def __init__(self, nv: ModuleType | None = None) -> None:
        self._nv = nv

    def read(self) -> list[GpuInfo]:
        report = self.diagnose()
        for problem in report.problems:
            log.warning("NVML: %s", problem)
        return list(report.gpus)

    def diagnose(self) -> NvmlReport:
        """Blocking. No driver at all (library missing, kernel module not loaded) is no problem, just no GPUs;
        a driver whose NVML fails (version mismatch...) or a device it fails on is a problem worth reporting."""
        if self._nv is not None:
            nv: ModuleType = self._nv
        else:
            try:
                import pynvml
            except ImportError:
                return NvmlReport()
            nv = pynvml
        try:
            nv.nvmlInit()
        except (nv.NVMLError_LibraryNotFound, nv.NVMLError_DriverNotLoaded):
            return NvmlReport()
        except nv.NVMLError as exc:
            return NvmlReport(problems=(f"NVML init failed: {exc}",))
        try:
            return self._read_all(nv)
        except nv.NVMLError as exc:
            return NvmlReport(problems=(f"NVML failed while listing devices: {exc}",))
        finally:
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as exc:
                log.debug("nvmlShutdown failed: %s", exc)

    def _read_all(self, nv: ModuleType) -> NvmlReport:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        try:
            cuda = _cuda(int(nv.nvmlSystemGetCudaDriverVersion_v2()))
        except nv.NVMLError:
            cuda = ""
        gpus: list[GpuInfo] = []
        problems: list[str] = []
        remarks: list[str] = []
        for index in range(nv.nvmlDeviceGetCount()):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                gpu = _device(nv, handle, index, driver, cuda, remarks)
                migs = _mig_devices(nv, handle, gpu)
            except nv.NVMLError as exc:
                problems.append(f"GPU {index}: {exc}: left out")
                continue
            if migs is None:
                gpus.append(gpu)
            else:
                kinds = f" ({', '.join(m.name.rpartition(' MIG ')[2] for m in migs)})" if migs else ""
                remarks.append(f"GPU {index} ({gpu.uuid}) is in MIG mode: offered as its {len(migs)} MIG device(s)"
                               + kinds)
                gpus.extend(migs)
        return NvmlReport(tuple(gpus), tuple(problems), tuple(remarks))


def _device(nv: ModuleType, handle: object, index: int, driver: str, cuda: str, remarks: list[str]) -> GpuInfo:
    """One GPU or MIG device; NVMLError only when its identity cannot be read (then it is left out)."""
    uuid = _text(nv.nvmlDeviceGetUUID(handle))
    name = _text(nv.nvmlDeviceGetName(handle))
    try:
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        total, free = int(memory.total), int(memory.free)
    except nv.NVMLError as exc:  # NOT_SUPPORTED on unified-memory systems (GB10): offered, with no memory figure
        remarks.append(f"GPU {index} ({uuid}): memory not reported ({exc}): offered with 0 bytes")
        total = free = 0
    try:
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{major}.{minor}"
    except nv.NVMLError:
        capability = ""
    try:
        utilization: int | None = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nv.NVMLError:
        utilization = None
    return GpuInfo(index=index, uuid=uuid, name=name, memory_total=total, memory_free=free,
                   utilization=utilization, driver_version=driver, compute_capability=capability, cuda_version=cuda)


def _mig_devices(nv: ModuleType, handle: object, gpu: GpuInfo) -> list[GpuInfo] | None:
    """The MIG devices of a GPU in MIG mode, None for a GPU that is not (or cannot be: NOT_SUPPORTED)."""
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
    except nv.NVMLError:
        return None
    if current != nv.NVML_DEVICE_MIG_ENABLE:
        return None
    found = []
    for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nv.NVMLError:  # NOT_FOUND: an empty slot
            continue
        one = _device(nv, mig, gpu.index, gpu.driver_version, gpu.cuda_version, [])
        found.append(replace(one, compute_capability=one.compute_capability or gpu.compute_capability,
                             parent=gpu.uuid))
    return found


H100 = GpuInfo(
    index=0,
    uuid="GPU-00000000-0000-4000-8000-000000000000",
    name="NVIDIA H100 80GB HBM3",
    memory_total=85_520_809_984,
    memory_free=84_929_413_120,
    utilization=0,
    driver_version="550.54.15",
    compute_capability="9.0",
    cuda_version="12.4",
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


async def diagnose_gpus(source: NvmlSource | None = None) -> NvmlReport:
    """The GPUs and what went wrong reading them (a source other than SystemNvml only lists GPUs)."""
    source = source or SystemNvml()
    if isinstance(source, SystemNvml):
        return await trio.to_thread.run_sync(source.diagnose)
    return NvmlReport(tuple(await trio.to_thread.run_sync(source.read)))
