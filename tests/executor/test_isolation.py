"""What a job container may and may not do, checked on dockerd's own view and from inside."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from peerd.config import load
from peerd.daemon.wiring import executor_from
from peerd.executor import DockerExecutor, RunOutcomeState
from peerd.executor.plan import container_name
from tests.executor.helpers import MiB, inspect_raw, job

pytestmark = pytest.mark.docker  # needs a real dockerd


async def test_running_container_has_the_isolation_defaults(executor: DockerExecutor, workdir: Path) -> None:
    await executor.start(job("iso-1", "sleep 60", cpus=0.5, memory=32 * MiB, pids=64))
    info = await executor.inspect("iso-1")
    assert info is not None and info.state == "running" and info.node_id == executor.node_id
    details = inspect_raw(info.container_id)
    host = details["HostConfig"]
    config = details["Config"]
    assert isinstance(host, dict) and isinstance(config, dict)

    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    assert host["Privileged"] is False
    assert host["Memory"] == 32 * MiB and host["MemorySwap"] == 32 * MiB
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    assert host["PidMode"] == "" and host["UTSMode"] == "" and host["UsernsMode"] == ""
    assert host["IpcMode"] == "private"
    assert not host["Binds"] and not host["Devices"] and not host["DeviceRequests"]
    assert set(host["Tmpfs"]) == {"/tmp"} and "size=" in host["Tmpfs"]["/tmp"]
    assert config["User"] == "65534:65534"
    assert "NVIDIA_VISIBLE_DEVICES=void" in config["Env"]
    mounts = details["Mounts"]
    assert isinstance(mounts, list)
    assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
        ("bind", str(workdir / "iso-1" / "out"), "/out", True)
    ]
    assert details["Name"] == "/" + container_name(executor.node_id, "iso-1")
    await executor.stop("iso-1", "test over")
    assert (await executor.wait("iso-1")).state is RunOutcomeState.CANCELLED


async def test_inside_the_job_cannot_write_outside_out_or_escalate(executor: DockerExecutor) -> None:
    outcome = await executor.run_job(
        job(
            "iso-2",
            "touch /etc/x 2>/dev/null && echo rootfs-writable",
            "echo ok > /tmp/t && echo tmp-writable",
            "echo ok > /out/o && echo out-writable",
            "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
            "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
        )
    )
    lines = outcome.stdout.decode().split()
    assert "rootfs-writable" not in lines
    assert "tmp-writable" in lines and "out-writable" in lines
    assert ["CapEff:", "0000000000000000"] == lines[lines.index("CapEff:"):][:2]
    assert lines[lines.index("NoNewPrivs:") + 1] == "1"
    assert lines[-1] == "lo" and "eth0" not in lines  # only loopback: no network at all


async def test_the_hosts_loopback_services_are_unreachable(executor: DockerExecutor) -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        outcome = await executor.run_job(
            job(
                "iso-3",
                f"nc -w 2 127.0.0.1 {port} </dev/null && echo reached-nc",
                f"wget -T 2 -q -O- http://127.0.0.1:{port}/ && echo reached-wget",
                "echo tried",
            )
        )
        nursery.cancel_scope.cancel()
    assert outcome.stdout == b"tried\n", outcome
    assert connections == 0


async def test_the_configured_tmpfs_size_bounds_tmp(nursery: trio.Nursery, node_id: str, tmp_path: Path) -> None:
    # [limits] tmpfs = "8M" in config.toml reaches the container: 12 MiB do not fit in /tmp.
    (tmp_path / "config.toml").write_text('[limits]\ntmpfs = "8M"\n')
    executor = executor_from(load(tmp_path), node_id)
    await nursery.start(executor.run)
    outcome = await executor.run_job(job(
        "tmpfs-1",
        "dd if=/dev/zero of=/tmp/big bs=1048576 count=12 2>/dev/null && echo wrote-12M",
        "echo kib=$(du -k /tmp/big | cut -f1)",
        memory=256 * MiB,  # tmpfs pages are charged to the memory limit: keep that out of the way
    ))
    lines = outcome.stdout.decode().split()
    assert "wrote-12M" not in lines, lines
    kib = int(next(line for line in lines if line.startswith("kib="))[4:])
    assert 0 < kib <= 8 * 1024, lines
