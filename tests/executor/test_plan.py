"""The container config every job gets, read exactly as dockerd receives it (pure)."""

from __future__ import annotations

from pathlib import Path

from peerd.executor import InputMount, RunSpec
from peerd.executor.plan import (
    Limits,
    container_name,
    exit_from_inspect,
    info_from_inspect,
    info_from_summary,
    parse_timestamp,
    plan_container,
)

MiB = 1 << 20
UUIDS = ("GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000")


def spec(**overrides: object) -> RunSpec:
    fields: dict[str, object] = {"task_id": "t-1", "image": "img:1", "command": ("python", "train.py"),
                                 "env": {"EPOCHS": "3"}, "cpus": 1.5, "memory": 512 * MiB, "pids": 128,
                                 "timeout": 60.0}
    fields.update(overrides)
    return RunSpec(**fields)  # type: ignore[arg-type]


def test_isolation_defaults() -> None:
    plan = plan_container(spec(), node_id="node1", out_dir=Path("/w/t-1/out"), deadline=100.0,
                          limits=Limits(tmp_size=32 * MiB))
    hc = plan.host_config
    assert hc["NetworkMode"] == "none" and hc["CapDrop"] == ["ALL"] and hc["Privileged"] is False
    assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["ReadonlyRootfs"] is True
    assert hc["Memory"] == hc["MemorySwap"] == 512 * MiB
    assert hc["NanoCpus"] == 1_500_000_000 and hc["PidsLimit"] == 128
    assert hc["Tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={32 * MiB},mode=1777"}
    assert hc["Mounts"] == [{"Type": "bind", "Source": "/w/t-1/out", "Target": "/out", "ReadOnly": False}]
    assert "DeviceRequests" not in hc and "Binds" not in hc
    assert not {"PidMode", "IpcMode"} & {k for k, v in hc.items() if v == "host"}
    assert plan.user == "65534:65534" and plan.command == ["python", "train.py"]
    assert plan.environment == {"EPOCHS": "3", "NVIDIA_VISIBLE_DEVICES": "void"}
    assert plan.name == container_name("node1", "t-1") == "peerd-node1-t-1"


def test_inputs_are_read_only_non_recursive_binds() -> None:
    inputs = (InputMount(Path("/w/t-1/in/data"), "/data"), InputMount(Path("/w/t-1/in/model"), "/opt/model"))
    hc = plan_container(spec(inputs=inputs), node_id="node1", out_dir=Path("/w/t-1/out"), deadline=1.0).host_config
    assert hc["Mounts"] == [
        {"Type": "bind", "Source": "/w/t-1/out", "Target": "/out", "ReadOnly": False},
        {"Type": "bind", "Source": "/w/t-1/in/data", "Target": "/data", "ReadOnly": True,
         "BindOptions": {"NonRecursive": True}},
        {"Type": "bind", "Source": "/w/t-1/in/model", "Target": "/opt/model", "ReadOnly": True,
         "BindOptions": {"NonRecursive": True}},
    ]


def test_gpus_are_pinned_by_uuid_twice() -> None:
    plan = plan_container(spec(gpus=UUIDS), node_id="n", out_dir=Path("/o"), deadline=1.0)
    assert plan.host_config["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": list(UUIDS), "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert plan.environment["NVIDIA_VISIBLE_DEVICES"] == ",".join(UUIDS)


def test_a_gpu_job_gets_shared_memory_by_its_memory_and_a_writable_home() -> None:
    big = plan_container(spec(gpus=UUIDS, memory=16 << 30), node_id="n", out_dir=Path("/o"), deadline=1.0)
    assert big.host_config["ShmSize"] == 8 << 30  # half the limit, charged to it
    small = plan_container(spec(gpus=UUIDS, memory=64 << 20), node_id="n", out_dir=Path("/o"), deadline=1.0)
    assert small.host_config["ShmSize"] == 64 << 20  # never below Docker's own
    assert big.environment["HOME"] == "/tmp" and big.environment["XDG_CACHE_HOME"] == "/tmp/.cache"
    own = plan_container(spec(gpus=UUIDS, env={"HOME": "/work"}), node_id="n", out_dir=Path("/o"), deadline=1.0)
    assert own.environment["HOME"] == "/work"  # the job's own wins
    cpu = plan_container(spec(memory=16 << 30), node_id="n", out_dir=Path("/o"), deadline=1.0)
    assert "ShmSize" not in cpu.host_config and "HOME" not in cpu.environment  # CPU jobs: as before


def test_network_only_when_asked() -> None:
    assert plan_container(spec(network=True), node_id="n", out_dir=Path("/o"), deadline=1).host_config[
        "NetworkMode"] == "bridge"


def test_labels_round_trip_through_list_and_inspect() -> None:
    plan = plan_container(spec(gpus=UUIDS), node_id="node1", out_dir=Path("/o"), deadline=1234.5)
    summary = {"Id": "abc", "Names": ["/" + plan.name], "Image": "img:1", "State": "running", "Labels": plan.labels}
    details = {"Id": "abc", "Name": "/" + plan.name, "Config": {"Image": "img:1", "Labels": plan.labels},
               "State": {"Status": "running"}}
    for info in (info_from_summary(summary), info_from_inspect(details)):
        assert (info.node_id, info.task_id, info.gpus, info.cpus, info.memory, info.deadline) == (
            "node1", "t-1", UUIDS, 1.5, 512 * MiB, 1234.5)
        assert info.name == plan.name and info.state == "running"


def test_exit_state_and_docker_timestamps() -> None:
    state = exit_from_inspect({"State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True,
                                         "StartedAt": "2024-05-01T12:00:00.123456789Z",
                                         "FinishedAt": "2024-05-01T12:00:01.5Z", "Error": ""}})
    assert state.exit_code == 137 and state.oom_killed
    assert state.started_at is not None and state.finished_at is not None
    assert state.started_at == 1714564800.123456 and state.finished_at == 1714564801.5
    assert parse_timestamp("0001-01-01T00:00:00Z") is None and parse_timestamp("garbage") is None
    assert parse_timestamp("2024-05-01T12:00:00Z") == 1714564800.0
