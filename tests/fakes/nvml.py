"""A fake of the pynvml module at the NVML boundary, for ``SystemNvml(nv=...)``: devices that fail on their own
(memory NOT_SUPPORTED, NO_PERMISSION, GPU_IS_LOST), a driver that is not loaded, GPUs that go between two reads,
and MIG devices. Errors are pynvml's own classes, raised with NVML's own codes, as the real library raises them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml


@dataclass
class FakeDevice:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory: int = 81_559 << 20
    capability: tuple[int, int] = (9, 0)
    fail: dict[str, int] = field(default_factory=dict)  # NVML function name -> NVML error code it raises
    mig: list[FakeDevice] | None = None  # MIG mode on: these MIG devices (None: MIG off)
    mig_slots: int = 7


class FakeNvmlLibrary:
    """Looks like the ``pynvml`` module to ``SystemNvml``; ``devices`` may change between reads."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE

    def __init__(self, devices: list[FakeDevice], *, driver: str = "550.54.15", cuda: int = 12040,
                 init_error: int | None = None) -> None:
        self.devices = devices
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error  # e.g. NVML_ERROR_DRIVER_NOT_LOADED
        self.initialised = 0

    @staticmethod
    def _raise(code: int) -> None:
        raise pynvml.NVMLError(code)

    def _call(self, device: FakeDevice, what: str, value: Callable[[], object]) -> object:
        code = device.fail.get(what)
        if code is not None:
            self._raise(code)
        return value()

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            self._raise(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        device = self.devices[index]
        self._call(device, "handle", lambda: None)
        return device

    def nvmlDeviceGetUUID(self, device: FakeDevice) -> str:
        return str(self._call(device, "uuid", lambda: device.uuid))

    def nvmlDeviceGetName(self, device: FakeDevice) -> str:
        return str(self._call(device, "name", lambda: device.name))

    def nvmlDeviceGetMemoryInfo(self, device: FakeDevice) -> object:
        return self._call(device, "memory", lambda: SimpleNamespace(total=device.memory, free=device.memory,
                                                                    used=0))

    def nvmlDeviceGetCudaComputeCapability(self, device: FakeDevice) -> tuple[int, int]:
        return self._call(device, "capability", lambda: device.capability)  # type: ignore[return-value]

    def nvmlDeviceGetUtilizationRates(self, device: FakeDevice) -> object:
        return self._call(device, "utilization", lambda: SimpleNamespace(gpu=0, memory=0))

    def nvmlDeviceGetMigMode(self, device: FakeDevice) -> tuple[int, int]:
        if device.mig is None and "mig" not in device.fail:
            return (0, 0)
        return self._call(device, "mig", lambda: (1, 1))  # type: ignore[return-value]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: FakeDevice) -> int:
        return device.mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: FakeDevice, slot: int) -> FakeDevice:
        migs = device.mig or []
        if slot >= len(migs):
            self._raise(pynvml.NVML_ERROR_NOT_FOUND)
        return migs[slot]
