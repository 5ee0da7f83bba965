"""NVML read device by device, at the NVML boundary (tests/fakes/nvml.py): one bad GPU hides no other, a driver
that is not loaded makes a CPU host, MIG GPUs are offered as their MIG devices."""

from __future__ import annotations

from types import ModuleType
from typing import cast

import pynvml
import pytest

from peerd.host.nvml import GpuInfo, SystemNvml
from tests.fakes.nvml import FakeDevice, FakeNvmlLibrary

GiB = 1 << 30


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-000000000000"


def read(lib: FakeNvmlLibrary) -> tuple[list[GpuInfo], str | None, tuple[str, ...]]:
    report = SystemNvml(cast(ModuleType, lib)).diagnose()
    assert lib.initialised == 0  # every read shuts NVML down again
    return list(report.gpus), report.problem, report.remarks


def test_healthy_gpus_with_driver_and_cuda_versions() -> None:
    gpus, problem, _ = read(FakeNvmlLibrary([FakeDevice(uuid(0)), FakeDevice(uuid(1))], cuda=12040))
    assert problem is None and [g.uuid for g in gpus] == [uuid(0), uuid(1)] and [g.index for g in gpus] == [0, 1]
    assert all(g.driver_version == "550.54.15" and g.cuda_version == "12.4" and g.compute_capability == "9.0"
               for g in gpus)


@pytest.mark.parametrize(("call", "code"), [
    ("handle", pynvml.NVML_ERROR_NO_PERMISSION),
    ("handle", pynvml.NVML_ERROR_GPU_IS_LOST),
    ("uuid", pynvml.NVML_ERROR_GPU_IS_LOST),
    ("name", pynvml.NVML_ERROR_UNKNOWN),
])
def test_one_bad_gpu_is_left_out_and_reported_the_others_stay(call: str, code: int) -> None:
    devices = [FakeDevice(uuid(0)), FakeDevice(uuid(1), fail={call: code}), FakeDevice(uuid(2))]
    gpus, problem, _ = read(FakeNvmlLibrary(devices))
    assert [g.uuid for g in gpus] == [uuid(0), uuid(2)] and [g.index for g in gpus] == [0, 2]
    assert problem is not None and "GPU 1" in problem and str(pynvml.NVMLError(code)) in problem


def test_memory_not_supported_keeps_the_gpu_with_no_memory_figure() -> None:  # unified memory (GB10)
    devices = [FakeDevice(uuid(0), name="NVIDIA GB10", fail={"memory": pynvml.NVML_ERROR_NOT_SUPPORTED})]
    gpus, problem, remarks = read(FakeNvmlLibrary(devices))
    assert problem is None and [g.memory_total for g in gpus] == [0]
    assert any("memory not reported" in n for n in remarks)


def test_missing_utilization_and_capability_are_no_failure() -> None:
    device = FakeDevice(uuid(0), fail={"utilization": pynvml.NVML_ERROR_NOT_SUPPORTED,
                                       "capability": pynvml.NVML_ERROR_NOT_SUPPORTED})
    (gpu,), problem, _ = read(FakeNvmlLibrary([device]))
    assert problem is None and gpu.utilization is None and gpu.compute_capability == ""


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND])
def test_no_driver_loaded_is_a_cpu_host_not_a_failure(code: int) -> None:
    assert read(FakeNvmlLibrary([FakeDevice(uuid(0))], init_error=code)) == ([], None, ())


def test_a_broken_driver_is_a_problem() -> None:
    gpus, problem, _ = read(FakeNvmlLibrary([], init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH))
    assert gpus == [] and problem is not None and "init failed" in problem


def test_a_gpu_lost_between_two_reads_leaves_the_second() -> None:
    lib = FakeNvmlLibrary([FakeDevice(uuid(0)), FakeDevice(uuid(1))])
    first, _, _ = read(lib)
    lib.devices[1].fail["handle"] = pynvml.NVML_ERROR_GPU_IS_LOST
    second, problem, _ = read(lib)
    assert [g.uuid for g in first] == [uuid(0), uuid(1)] and [g.uuid for g in second] == [uuid(0)]
    assert problem is not None and "GPU is lost" in problem


def test_a_mig_gpu_is_offered_as_its_mig_devices_never_whole() -> None:
    migs = [FakeDevice(f"MIG-{i:08x}-aaaa-4000-8000-000000000000", name=f"NVIDIA A100-SXM4-40GB MIG {kind}",
                       memory=mem, fail={"capability": pynvml.NVML_ERROR_NOT_SUPPORTED,
                                         "utilization": pynvml.NVML_ERROR_NOT_SUPPORTED})
            for i, (kind, mem) in enumerate([("3g.20gb", 19_968 << 20), ("1g.5gb", 4_864 << 20)])]
    devices = [FakeDevice(uuid(0), name="NVIDIA A100-SXM4-40GB", capability=(8, 0), mig=migs),
               FakeDevice(uuid(1), name="NVIDIA A100-SXM4-40GB", capability=(8, 0))]
    gpus, problem, remarks = read(FakeNvmlLibrary(devices))
    assert problem is None
    assert [g.uuid for g in gpus] == [migs[0].uuid, migs[1].uuid, uuid(1)]  # the MIG parent itself is not offered
    assert [g.memory_total for g in gpus[:2]] == [19_968 << 20, 4_864 << 20]
    assert all(g.parent == uuid(0) and g.compute_capability == "8.0" and g.index == 0 for g in gpus[:2])
    assert any("MIG mode" in n and "3g.20gb" in n for n in remarks)


def test_a_mig_gpu_with_no_mig_devices_offers_nothing() -> None:
    gpus, problem, remarks = read(FakeNvmlLibrary([FakeDevice(uuid(0), mig=[])]))
    assert gpus == [] and problem is None and any("0 MIG device(s)" in n for n in remarks)
