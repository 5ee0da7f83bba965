"""The inventory snapshot on this host (real psutil, real dockerd, real NVML probing)."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import psutil
import pytest

from peerd.executor.gpuaccess import decide, probe_toolkit
from peerd.host.nvml import H100, FakeNvml, SystemNvml, read_gpus
from peerd.host.resources import snapshot


@pytest.mark.docker
async def test_snapshot_reports_this_host(tmp_path: Path) -> None:
    inventory = await snapshot(home=tmp_path / "not-created-yet")
    assert inventory.cpus == len(os.sched_getaffinity(0))
    assert inventory.memory == psutil.virtual_memory().total
    assert 0 < inventory.memory_available <= inventory.memory
    assert 0 < inventory.disk_free <= psutil.disk_usage(str(tmp_path)).total
    assert inventory.docker and inventory.docker_version and inventory.docker_detail == ""
    toolkit = probe_toolkit(inventory.engine.cdi_spec_dirs)
    assert inventory.gpu_support == decide(inventory.engine, toolkit)  # whatever this host's toolkit allows
    assert inventory.nvidia_runtime is inventory.gpu_support.ok
    assert inventory.gpus == tuple(await read_gpus())  # whatever NVML says here (none on CI)


def test_system_nvml_on_this_host() -> None:
    report = SystemNvml().diagnose()
    gpus, problem = list(report.gpus), report.problem
    if ctypes.util.find_library("nvidia-ml") is None:  # no driver: no GPUs, and that is no problem
        assert (gpus, problem) == ([], None)
        assert SystemNvml().read() == []
    else:
        assert problem is None and gpus
        assert all(g.uuid.startswith(("GPU-", "MIG-")) for g in gpus)


async def test_fake_gpus_come_through_the_same_interface(tmp_path: Path) -> None:
    fake = FakeNvml.identical(2)
    inventory = await snapshot(home=tmp_path, nvml=fake)
    assert [g.index for g in inventory.gpus] == [0, 1]
    assert len({g.uuid for g in inventory.gpus}) == 2
    assert all(g.name == H100.name and g.compute_capability == "9.0" for g in inventory.gpus)


async def test_unreachable_docker_is_reported_not_raised(tmp_path: Path) -> None:
    inventory = await snapshot(home=tmp_path, docker_url=f"unix://{tmp_path}/no-docker.sock", docker_timeout=2)
    assert not inventory.docker and not inventory.nvidia_runtime
    assert "dockerd" in inventory.docker_detail
