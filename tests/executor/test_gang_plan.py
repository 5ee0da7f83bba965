"""A gang member at the executor boundary (pure, plus one refusal on the real dockerd): its
container joins its network holder's namespace and nothing else; with GPUs it gets exactly its
pinned devices and the caller's NCCL/GLOO variables beside the overlay; the holder gets neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.executor import DockerExecutor
from peerd.executor.contract import OverlayPeer, OverlaySpec, RunSpec
from peerd.executor.errors import InvalidSpec, PolicyError, Reason
from peerd.executor.gpuaccess import GpuAccess, GpuSupport
from peerd.executor.plan import (
    HOLDER_COMMAND,
    LABEL_HOLDER,
    LABEL_NODE,
    holder_name,
    network_mode,
    plan_container,
    plan_holder,
)
from peerd.overlay.keys import generate_keys
from tests.executor.helpers import IMAGE, holder_names

MiB = 1 << 20
UUIDS = ("GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000")
KEYS = generate_keys()
OVERLAY = OverlaySpec(address="10.99.0.2/24", private_key=KEYS.private_key, listen_port=51820,
                      peers=(OverlayPeer(generate_keys().public_key, "198.51.100.7:51820", "10.99.0.1"),))
RANK_ENV = {  # what the gang's caller sets (peerd.jobs.gang), passed through untouched
    "MASTER_ADDR": "10.99.0.1", "MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
    "NCCL_SOCKET_IFNAME": "peerd0", "GLOO_SOCKET_IFNAME": "peerd0",
}


def gpu_rank(**overrides: object) -> RunSpec:
    fields: dict[str, object] = {"task_id": "g-1", "image": "trainer:1", "command": ("torchrun", "train.py"),
                                 "env": RANK_ENV, "cpus": 4.0, "memory": 1024 * MiB, "timeout": 600.0,
                                 "gpus": UUIDS, "overlay": OVERLAY}
    fields.update(overrides)
    return RunSpec(**fields)  # type: ignore[arg-type]


def test_a_gpu_rank_gets_its_devices_its_holders_network_and_every_isolation_default() -> None:
    holder = holder_name("node1", "g-1")
    plan = plan_container(gpu_rank(), node_id="node1", out_dir=Path("/w/g-1/out"), deadline=1.0, network_of=holder)
    hc = plan.host_config
    assert hc["NetworkMode"] == f"container:{holder}"
    assert hc["DeviceRequests"] == [{"Driver": "", "Count": 0, "DeviceIDs": list(UUIDS),
                                     "Capabilities": [["gpu"]], "Options": {}}]
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["ReadonlyRootfs"] is True and hc["Privileged"] is False
    assert plan.environment == {**RANK_ENV, "NVIDIA_VISIBLE_DEVICES": ",".join(UUIDS),
                                "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", "HOME": "/tmp",
                                "XDG_CACHE_HOME": "/tmp/.cache"}
    assert plan.entrypoint is None and plan.labels[LABEL_NODE] == "node1"


def test_the_holder_has_no_network_no_gpus_and_the_same_isolation() -> None:
    plan = plan_holder(gpu_rank(), node_id="node1")
    hc = plan.host_config
    assert plan.name == holder_name("node1", "g-1") and plan.image == "trainer:1"
    assert hc["NetworkMode"] == "none" and "DeviceRequests" not in hc and "Mounts" not in hc
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"] and hc["ReadonlyRootfs"] is True
    assert plan.environment == {"NVIDIA_VISIBLE_DEVICES": "void"} and plan.user == "65534:65534"
    assert plan.entrypoint == HOLDER_COMMAND and plan.command is None
    assert plan.labels == {LABEL_HOLDER: "node1", "peerd.task": "g-1"}  # not peerd.node: it is no job


def test_a_gang_member_never_runs_without_its_holder_and_others_keep_their_network() -> None:
    with pytest.raises(InvalidSpec):
        network_mode(gpu_rank())
    assert network_mode(gpu_rank(overlay=None)) == "none"
    assert network_mode(gpu_rank(overlay=None, network=True)) == "bridge"
    with pytest.raises(InvalidSpec):
        gpu_rank(network=True)  # a gang member's only network is its overlay


@pytest.mark.docker
async def test_a_gpu_rank_on_a_host_without_the_gpu_runtime_is_refused_before_anything_is_made(
    executor: DockerExecutor, node_id: str,
) -> None:
    executor.gpu_support = GpuSupport(GpuAccess.NONE, "no toolkit")  # whatever this host's dockerd has
    with pytest.raises(PolicyError) as caught:
        await executor.start(gpu_rank(image=IMAGE))
    assert caught.value.reason is Reason.NO_GPU_RUNTIME
    assert holder_names(node_id) == []
