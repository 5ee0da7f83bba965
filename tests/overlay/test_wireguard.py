"""The WireGuard adapter on this host, without docker: a real wireguard-go (or kernel) interface is made,
moved into a real network namespace (an ``unshare --net`` process) and configured there; closing,
removing what a dead daemon left, and cancelling ``open`` at any point leave nothing on the host."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from peerd.executor.contract import OverlayPeer, OverlaySpec
from peerd.overlay.commands import node_prefix, tunnel_name
from peerd.overlay.errors import OverlayError
from peerd.overlay.host import probe
from peerd.overlay.keys import generate_keys
from peerd.overlay.wireguard import WireGuard, leftovers, wireguard_go_processes
from tests.waiting import eventually

FOUND = probe()
pytestmark = pytest.mark.skipif(not FOUND.ok or os.geteuid() != 0, reason=f"needs root and WireGuard: {FOUND.detail}")
NODE = f"wgtest{os.getpid()}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(endpoint: str = "127.0.0.1:9") -> OverlaySpec:
    return OverlaySpec(address="10.99.0.1/24", private_key=generate_keys().private_key, listen_port=free_udp_port(),
                       peers=(OverlayPeer(generate_keys().public_key, endpoint, "10.99.0.2"),))


@pytest.fixture
async def netns_pid() -> AsyncIterator[int]:
    """The pid of a process alone in a fresh network namespace (waited for, bounded)."""
    process = await trio.lowlevel.open_process(["unshare", "--net", "sleep", "infinity"])
    own = os.readlink("/proc/self/ns/net")
    await eventually("unshare to enter its namespace",
                     lambda: os.readlink(f"/proc/{process.pid}/ns/net") != own, timeout=5, interval=0.005)
    yield process.pid
    process.kill()
    await process.wait()


@pytest.fixture
def wireguard() -> WireGuard:
    assert FOUND.backend is not None
    return WireGuard(FOUND.backend)


@pytest.fixture(autouse=True)
def nothing_left_behind() -> None:
    yield
    assert leftovers(node_prefix(NODE)) == set()


def links_in(pid: int) -> list[str]:
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "-4", "addr"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(" ".join(line.split()[1:4]) for line in out.splitlines())


async def test_open_puts_the_interface_into_the_namespace_and_close_removes_everything(
    wireguard: WireGuard, netns_pid: int,
) -> None:
    name = tunnel_name(NODE, "t-open")
    tunnel = await wireguard.open(name, spec(), netns_pid)
    assert links_in(netns_pid) == ["peerd0 inet 10.99.0.1/24"]
    assert not Path(f"/sys/class/net/{name}").exists()  # no longer in the host's namespace
    await wireguard.close(tunnel)
    assert leftovers(node_prefix(NODE)) == set()
    assert links_in(netns_pid) == []


async def test_what_a_dead_daemon_left_is_found_by_prefix_and_removed(wireguard: WireGuard, netns_pid: int) -> None:
    name = tunnel_name(NODE, "t-orphan")
    await wireguard.open(name, spec(), netns_pid)  # the Tunnel (and its child handle) is forgotten
    assert leftovers(node_prefix(NODE)) == {name}
    await wireguard.remove(name)
    assert name not in wireguard_go_processes().values()


async def test_a_refused_configuration_leaves_nothing(wireguard: WireGuard, netns_pid: int) -> None:
    with pytest.raises(OverlayError, match="wg set"):  # wg cannot resolve the endpoint
        await wireguard.open(tunnel_name(NODE, "t-bad"), spec("no-such-host.invalid:9"), netns_pid)


@pytest.mark.parametrize("after", [0.0, 0.002, 0.01, 0.03, 0.06, 0.1])
async def test_open_cancelled_at_any_point_leaves_nothing(wireguard: WireGuard, netns_pid: int, after: float) -> None:
    name = tunnel_name(NODE, f"t-cancel-{after}")
    with trio.move_on_after(after) as scope:
        tunnel = await wireguard.open(name, spec(), netns_pid)
    if not scope.cancelled_caught:  # it finished first: close it as the executor would
        await wireguard.close(tunnel)
    assert leftovers(node_prefix(NODE)) == set()
