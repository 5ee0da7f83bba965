"""How dockerd gives containers GPUs, decided from recorded ``docker info`` answers and the toolkit's files
as each kind of host has them (tests/executor/dockerinfo/*.json): the decision and the request form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peerd.executor.contract import RunSpec
from peerd.executor.engine import EngineInfo, engine_info_from
from peerd.executor.gpuaccess import (
    HOOK_BINARY,
    GpuAccess,
    ToolkitFacts,
    cdi_device_names,
    cuda_requirement,
    decide,
    is_no_gpu_runtime,
    probe_toolkit,
    read_toolkit_config,
    unmet_cuda,
)
from peerd.executor.plan import Limits, plan_container

FIXTURES = Path(__file__).parent / "dockerinfo"
UUID = "GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c"


def recorded(name: str) -> dict[str, object]:
    doc = json.loads((FIXTURES / name).read_text())
    assert isinstance(doc, dict)
    return doc


def host(tmp_path: Path, doc: dict[str, object]) -> tuple[EngineInfo, ToolkitFacts]:
    """The engine as dockerd described it, and the toolkit probed from its files laid out under ``tmp_path``
    (the CDI directories dockerd names are moved there)."""
    info = doc["info"]
    version = doc["version"]
    toolkit = doc["toolkit"]
    assert isinstance(info, dict) and isinstance(version, dict) and isinstance(toolkit, dict)
    dirs = []
    for i, _ in enumerate(info.get("CDISpecDirs") or ()):
        dirs.append(str(tmp_path / f"cdi{i}"))
        (tmp_path / f"cdi{i}").mkdir()
    for name, text in toolkit["cdi"].items():
        (tmp_path / "cdi0" / name).write_text(text)
    if "CDISpecDirs" in info:
        info = {**info, "CDISpecDirs": dirs}
    engine = engine_info_from(info, version, str(doc["api_version"]))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if toolkit["hook"]:
        hook = bin_dir / HOOK_BINARY
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o755)
    config = tmp_path / "config.toml"
    if toolkit["config.toml"] is not None:
        config.write_text(toolkit["config.toml"])
    return engine, probe_toolkit(engine.cdi_spec_dirs, config, path=str(bin_dir))


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_each_recorded_host_gets_the_request_form_that_works_there(tmp_path: Path, name: str) -> None:
    doc = recorded(name)
    engine, toolkit = host(tmp_path, doc)
    support = decide(engine, toolkit)
    assert support.access == doc["expect"], support.detail
    assert support.ok is (support.access is not GpuAccess.NONE)


def test_docker_28_without_the_toolkit_has_no_gpu_support_though_it_reports_cdi_dirs(tmp_path: Path) -> None:
    engine, toolkit = host(tmp_path, recorded("docker-28-no-toolkit.json"))
    assert engine.cdi_spec_dirs  # what used to count as GPU support
    support = decide(engine, toolkit)
    assert not support.ok and "none is NVIDIA's" in support.detail


def test_the_ci_host_without_the_toolkit_has_none(tmp_path: Path) -> None:
    doc = recorded("docker-20.10.json")
    doc["toolkit"] = {"hook": False, "config.toml": None, "cdi": {}}
    support = decide(*host(tmp_path, doc))
    assert support.access is GpuAccess.NONE and HOOK_BINARY in support.detail


def test_a_hook_in_cdi_mode_without_a_runtime_is_no_support() -> None:
    engine = EngineInfo(reachable=True, runtimes=("runc",))
    support = decide(engine, ToolkitFacts(hook=True, mode="cdi"))
    assert not support.ok and "cdi mode" in support.detail


def test_a_cdi_spec_named_by_index_only_is_not_enough() -> None:
    engine = EngineInfo(reachable=True, cdi_spec_dirs=("/etc/cdi",))
    support = decide(engine, ToolkitFacts(cdi_devices=("0", "1", "all")))
    assert not support.ok and "by UUID" in support.detail


def test_an_unreachable_dockerd_gives_no_gpus() -> None:
    assert decide(EngineInfo(reachable=False, detail="no socket"), ToolkitFacts(hook=True)).access is GpuAccess.NONE


def test_toolkit_config_and_cdi_specs_are_read() -> None:
    text = ('swarm-resource = "DOCKER_RESOURCE_GPU,DOCKER_RESOURCE_GPU_X"\n'
            "accept-nvidia-visible-devices-envvar-when-unprivileged = false\n"
            '[nvidia-container-runtime]\nmode = "csv"\n')
    assert read_toolkit_config(text) == ("csv", ("DOCKER_RESOURCE_GPU", "DOCKER_RESOURCE_GPU_X"), False)
    assert read_toolkit_config("") == ("", (), True)
    spec = {"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": [{"name": "0"}, {"name": UUID}]}
    assert cdi_device_names(json.dumps(spec)) == ("0", UUID)
    assert cdi_device_names(json.dumps({**spec, "kind": "amd.com/gpu"})) == ()
    assert cdi_device_names("kind: vendor.com/device\ndevices:\n- name: x\n") == ()


SPEC = RunSpec(task_id="t1", image="busybox", cpus=1.0, memory=64 << 20, timeout=10.0, gpus=(UUID,))


@pytest.mark.parametrize(("access", "fields"), [
    (GpuAccess.HOOK, {"DeviceRequests": [{"Driver": "", "Count": 0, "DeviceIDs": [UUID], "Capabilities": [["gpu"]],
                                          "Options": {}}]}),
    (GpuAccess.CDI, {"DeviceRequests": [{"Driver": "cdi", "Count": 0, "DeviceIDs": [f"nvidia.com/gpu={UUID}"],
                                         "Capabilities": [], "Options": {}}]}),
    (GpuAccess.RUNTIME, {"Runtime": "nvidia"}),
])
def test_the_request_form_follows_the_decision(access: GpuAccess, fields: dict[str, object]) -> None:
    plan = plan_container(SPEC, node_id="n1", out_dir=Path("/x"), deadline=1.0, gpu_access=access,
                          limits=Limits(gpu_capabilities=("compute", "utility", "video")))
    assert {k: plan.host_config[k] for k in fields} == fields
    assert set(plan.host_config) & {"DeviceRequests", "Runtime"} == set(fields)
    assert plan.environment["NVIDIA_VISIBLE_DEVICES"] == UUID
    assert plan.environment["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility,video"


@pytest.mark.parametrize("message", [
    'create peerd-x: could not select device driver "" with capabilities: [[gpu]]',
    'start peerd-x: could not select device driver "cdi" with capabilities: []',
    "start peerd-x: CDI device injection failed: unresolvable CDI devices nvidia.com/gpu=GPU-1",
    "create peerd-x: unknown or invalid runtime name: nvidia",
    "create peerd-x: Unknown runtime specified nvidia",  # Docker 20.10, recorded here
    "OCI runtime create failed: nvidia-container-cli: initialization error: nvml error: driver not loaded",
])
def test_start_errors_that_mean_no_gpu_runtime(message: str) -> None:
    assert is_no_gpu_runtime(message)


def test_other_start_errors_are_not_taken_for_it() -> None:
    assert not is_no_gpu_runtime('exec: "nosuch": executable file not found in $PATH')


def test_an_images_cuda_requirement_is_read_and_its_start_error_is_not_a_runtime_failure() -> None:
    require = "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471"
    assert cuda_requirement(require) == "12.4" and cuda_requirement("") == "" and cuda_requirement("brand=x") == ""
    error = ("start peerd-x: OCI runtime create failed: nvidia-container-cli: requirement error: unsatisfied "
             "condition: cuda>=12.4, please update your driver to a newer version, or use an earlier cuda container")
    assert unmet_cuda(error) == "12.4" and not is_no_gpu_runtime(error)


def test_swarm_resource_variables_the_toolkit_reads_first_carry_exactly_the_leased_gpus() -> None:
    gpu = plan_container(SPEC, node_id="n1", out_dir=Path("/x"), deadline=1.0,
                         device_variables=("DOCKER_RESOURCE_GPU",))
    assert gpu.environment["DOCKER_RESOURCE_GPU"] == gpu.environment["NVIDIA_VISIBLE_DEVICES"] == UUID
    cpu = plan_container(RunSpec(task_id="t2", image="busybox", cpus=1.0, memory=64 << 20, timeout=10.0),
                         node_id="n1", out_dir=Path("/x"), deadline=1.0, device_variables=("DOCKER_RESOURCE_GPU",))
    assert cpu.environment["DOCKER_RESOURCE_GPU"] == "void"  # an image's ENV cannot pick GPUs through it
