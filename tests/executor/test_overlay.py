"""Gang members' overlays on the real dockerd with real wireguard-go and real namespaces: two ranks
reach each other over WireGuard and nothing else (not the host, not the docker bridge, not another
job's container), and every interface, wireguard-go process, UAPI socket and holder goes at the end,
after a cancel, after a failed set-up, and through ``recover`` after a daemon restart."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import psutil
import pytest
import trio

from peerd.data.blobstore import ChunkStore
from peerd.executor import DockerExecutor, RunOutcomeState
from peerd.executor.contract import OverlayPeer, OverlaySpec, RunSpec
from peerd.executor.errors import ExecutorError, Reason
from peerd.executor.gangnet import GangNetworks
from peerd.executor.plan import Limits
from peerd.overlay.commands import node_prefix, tunnel_name
from peerd.overlay.host import probe
from peerd.overlay.keys import generate_keys
from peerd.overlay.wireguard import UAPI_DIR, leftovers, wireguard_go_processes
from tests.executor.helpers import IMAGE, holder_names, job

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not probe().ok, reason=f"no overlay here: {probe().detail}"),
]

PORT = 5000
# bounded wait for the other rank's listener (a condition, retried at most 400 times)
RETRY = "sent=0; for i in $(seq 400); do if {}; then sent=1; break; fi; sleep 0.05; done; [ $sent = 1 ] || exit 1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gang(size: int) -> list[OverlaySpec]:
    """Overlay specs for ranks 0..size-1, each pointing at every other rank over 127.0.0.1."""
    keys = [generate_keys() for _ in range(size)]
    ports = [free_udp_port() for _ in range(size)]
    return [
        OverlaySpec(
            address=f"10.99.0.{r + 1}/24", private_key=keys[r].private_key, listen_port=ports[r],
            peers=tuple(
                OverlayPeer(keys[p].public_key, f"127.0.0.1:{ports[p]}", f"10.99.0.{p + 1}")
                for p in range(size) if p != r
            ),
        )
        for r in range(size)
    ]


def assert_nothing_left(node_id: str) -> None:
    prefix = node_prefix(node_id)
    assert leftovers(prefix) == set()
    assert [n for n in wireguard_go_processes().values() if n.startswith(prefix)] == []
    assert not UAPI_DIR.is_dir() or list(UAPI_DIR.glob(f"{prefix}*")) == []
    assert holder_names(node_id) == []


@pytest.fixture
def cleanup(node_id: str) -> Iterator[None]:
    """Whatever a failing test left of its overlays (the node_id fixture sweeps the containers)."""
    yield
    trio.run(GangNetworks(node_id, Limits()).remove_tunnels, set())


def rank(task_id: str, overlay: OverlaySpec, *script: str, **overrides: object) -> RunSpec:
    return job(task_id, *script, overlay=overlay, **overrides)


def start_bridged_listener(node_id: str) -> str:
    """Blocking: a plain container on the docker bridge answering on PORT; its address."""
    api = docker.APIClient(version="auto")
    try:
        script = f"while true; do nc -l -p {PORT} </dev/null; done"
        cid = api.create_container(IMAGE, ["sh", "-c", script], labels={"peerd.node": node_id},
                                   host_config=api.create_host_config(network_mode="bridge"))
        api.start(cid)
        return str(api.inspect_container(cid)["NetworkSettings"]["IPAddress"])
    finally:
        api.close()


def run_bridged(node_id: str, script: str) -> bytes:
    """Blocking: ``script`` in a plain container on the docker bridge; its output."""
    api = docker.APIClient(version="auto", timeout=60)
    try:
        cid = api.create_container(IMAGE, ["sh", "-c", script], labels={"peerd.node": node_id},
                                   host_config=api.create_host_config(network_mode="bridge"))
        api.start(cid)
        api.wait(cid)
        out = bytes(api.logs(cid))
        api.remove_container(cid, force=True)
        return out
    finally:
        api.close()


def host_ipv4() -> list[str]:
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127.")})


async def test_two_ranks_talk_over_the_overlay_and_reach_nothing_else(
    executor: DockerExecutor, node_id: str, cleanup: None, nursery: trio.Nursery,
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="0.0.0.0"))[0]
    host_port = listener.socket.getsockname()[1]
    accepted: list[object] = []

    async def serve(stream: trio.SocketStream) -> None:
        accepted.append(stream.socket.getpeername())
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, serve, [listener])
    bridged_ip = await trio.to_thread.run_sync(start_bridged_listener, node_id)  # another job's container
    (stranger,) = gang(1)  # another gang's rank, listening at an address in the same subnet
    await executor.start(rank("ov-stranger", replace(stranger, address="10.99.0.3/24"), f"nc -l -p {PORT}"))
    targets = [*host_ipv4(), "127.0.0.1", bridged_ip, "10.99.0.3"]
    ports = {t: (PORT if t in (bridged_ip, "10.99.0.3") else host_port) for t in targets}
    probes = "; ".join(f"if nc -w 1 {t} {ports[t]} </dev/null; then echo reached {t}; else echo blocked {t}; fi"
                       for t in targets)
    one, two = gang(2)
    await executor.start(rank("ov-rank1", two, "ls /sys/class/net", f"nc -l -p {PORT}"))
    await executor.start(rank("ov-rank0", one, "ls /sys/class/net",
                              RETRY.format(f"echo hello over the overlay | nc 10.99.0.2 {PORT}"), probes))
    first, second = await executor.wait("ov-rank0"), await executor.wait("ov-rank1")
    assert first.state is RunOutcomeState.SUCCEEDED, first
    assert second.state is RunOutcomeState.SUCCEEDED, second
    assert second.stdout.split() == [b"lo", b"peerd0", b"hello", b"over", b"the", b"overlay"]
    lines = first.stdout.decode().split("\n")
    assert lines[:2] == ["lo", "peerd0"]
    assert sorted(line for line in lines if line.startswith(("blocked", "reached"))) == sorted(
        f"blocked {t}" for t in targets)
    assert accepted == []
    await executor.stop("ov-stranger", "done")
    assert (await executor.wait("ov-stranger")).state is RunOutcomeState.CANCELLED  # it never got a connection
    # control: the same probes from a job on the bridge do reach the host and the other container
    control = await trio.to_thread.run_sync(run_bridged, node_id, probes)
    assert any(f"reached {a}".encode() in control for a in host_ipv4()), control  # the bridge's gateway, at least
    assert f"reached {bridged_ip}".encode() in control
    assert accepted
    assert_nothing_left(node_id)


async def test_a_rank_cancelled_mid_run_leaves_nothing(executor: DockerExecutor, node_id: str, cleanup: None) -> None:
    (alone,) = gang(1)
    await executor.start(rank("ov-cancel", alone, f"nc -l -p {PORT}"))
    assert tunnel_name(node_id, "ov-cancel") in {n for n in wireguard_go_processes().values()}
    assert len(holder_names(node_id)) == 1
    await executor.stop("ov-cancel", "test")
    outcome = await executor.wait("ov-cancel")
    assert outcome.state is RunOutcomeState.CANCELLED
    assert_nothing_left(node_id)


async def test_a_failed_setup_leaves_nothing(executor: DockerExecutor, node_id: str, cleanup: None) -> None:
    (good,) = gang(1)
    bad_peer = OverlayPeer(generate_keys().public_key, "no-such-host.invalid:51820", "10.99.0.9")
    spec = OverlaySpec(address=good.address, private_key=good.private_key, listen_port=good.listen_port,
                       peers=(bad_peer,))
    with pytest.raises(ExecutorError) as caught:
        await executor.start(rank("ov-fails", spec, "true"))
    assert caught.value.reason is Reason.OVERLAY_FAILED
    assert_nothing_left(node_id)


async def test_recover_removes_what_a_dead_daemon_left(
    node_id: str, workdir: Path, store: ChunkStore, cleanup: None,
) -> None:
    (alone,) = gang(1)
    async with trio.open_nursery() as nursery:
        first = DockerExecutor(node_id, workdir, stop_grace=1, store=store)
        await nursery.start(first.run)
        await first.start(rank("ov-orphan", alone, f"nc -l -p {PORT}"))
        nursery.cancel_scope.cancel()  # the daemon goes; the container, holder and tunnel stay
    assert leftovers(node_prefix(node_id)) == {tunnel_name(node_id, "ov-orphan")}
    assert len(holder_names(node_id)) == 1
    async with trio.open_nursery() as nursery:
        second = DockerExecutor(node_id, workdir, stop_grace=1, store=store)
        await nursery.start(second.run)
        report = await second.recover(set())
        assert report.removed == ("ov-orphan",)
        nursery.cancel_scope.cancel()
    assert_nothing_left(node_id)


async def test_a_rank_reattached_after_a_restart_keeps_its_overlay_and_cleans_up_when_it_ends(
    node_id: str, workdir: Path, store: ChunkStore, cleanup: None,
) -> None:
    (alone,) = gang(1)
    name = tunnel_name(node_id, "ov-kept")
    async with trio.open_nursery() as nursery:
        first = DockerExecutor(node_id, workdir, stop_grace=1, store=store)
        await nursery.start(first.run)
        await first.start(rank("ov-kept", alone, f"nc -l -p {PORT}"))
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        second = DockerExecutor(node_id, workdir, stop_grace=1, store=store)
        await nursery.start(second.run)
        report = await second.recover({"ov-kept"})
        assert report.reattached == ("ov-kept",)
        assert leftovers(node_prefix(node_id)) == {name} and len(holder_names(node_id)) == 1
        await second.stop("ov-kept", "test")
        assert (await second.wait("ov-kept")).state is RunOutcomeState.CANCELLED
        nursery.cancel_scope.cancel()
    assert_nothing_left(node_id)


@pytest.mark.parametrize("after", [0.0, 0.05, 0.15, 0.3, 0.6, 1.0, 3.0])
async def test_a_start_cancelled_at_any_point_leaves_nothing(
    executor: DockerExecutor, node_id: str, cleanup: None, after: float,
) -> None:
    (alone,) = gang(1)
    with trio.move_on_after(after):
        await executor.start(rank("ov-interrupted", alone, f"nc -l -p {PORT}"))
    if "ov-interrupted" in executor.running():  # it got as far as running: end it as a caller would
        await executor.stop("ov-interrupted", "test")
        await executor.wait("ov-interrupted")
    assert_nothing_left(node_id)
