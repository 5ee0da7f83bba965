"""peerd.host.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from peerd.host import sdnotify


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notify_without_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify("READY=1") is True
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False


def test_notify_sends_datagram_to_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert sdnotify.notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_supports_abstract_socket() -> None:
    name = f"peerd-test-sdnotify-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert sdnotify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_missing_socket_returns_false(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}
    assert sdnotify.notify("READY=1", environ=env) is False


def test_notify_never_blocks_on_a_full_receiver(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    env = {"NOTIFY_SOCKET": path}
    # Nobody reads: the receive queue fills up and a non-blocking send fails
    # instead of blocking the event loop.
    results = [sdnotify.notify("WATCHDOG=1", environ=env) for _ in range(10_000)]
    assert results[0] is True
    assert results[-1] is False


def test_unsupported_socket_scheme_is_ignored() -> None:
    assert sdnotify.notify_socket_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "SELF"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    # Symbolic PIDs: under `docker run` the test process may well be PID 1.
    pids = {"SELF": str(os.getpid()), "OTHER": str(os.getpid() + 1)}
    if env.get("WATCHDOG_PID") in pids:
        env = {**env, "WATCHDOG_PID": pids[env["WATCHDOG_PID"]]}
    assert sdnotify.watchdog_interval(env) == expected


async def _recv(sock: trio.socket.SocketType) -> tuple[float, bytes]:
    data = await sock.recv(4096)
    return trio.current_time(), data


async def test_watchdog_pings_at_half_the_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "wd.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(path)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        watchdog = sdnotify.Watchdog(environ=env)
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            await nursery.start(watchdog.run)
            received = [await _recv(sock) for _ in range(3)]
            nursery.cancel_scope.cancel()
    assert [data for _, data in received] == [b"WATCHDOG=1"] * 3
    assert [round(t - start, 3) for t, _ in received] == [0.0, 15.0, 30.0]
    assert watchdog.pings_sent >= 3


async def test_watchdog_sends_status_lines(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "wd.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    counter = iter(range(100))

    def status() -> str:
        return f"peers={next(counter)}\njobs=0"

    with sock:
        await sock.bind(path)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}
        watchdog = sdnotify.Watchdog(status=status, status_every=10.0, environ=env)
        assert watchdog.period == 2.0
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run)
            first = await sock.recv(4096)
            second = await sock.recv(4096)
            nursery.cancel_scope.cancel()
    assert first == b"WATCHDOG=1\nSTATUS=peers=0 jobs=0"
    assert second == b"WATCHDOG=1\nSTATUS=peers=1 jobs=0"


async def test_status_only_without_watchdog(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "st.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(path)
        watchdog = sdnotify.Watchdog(status=lambda: "idle", status_every=7.0, environ={"NOTIFY_SOCKET": path})
        assert watchdog.interval is None
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            await nursery.start(watchdog.run)
            assert await sock.recv(4096) == b"STATUS=idle"
            assert await sock.recv(4096) == b"STATUS=idle"
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert elapsed == pytest.approx(7.0)
    assert watchdog.pings_sent == 0


async def test_watchdog_without_systemd_idles_until_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watchdog = sdnotify.Watchdog(environ={})
    assert watchdog.interval is None
    with trio.move_on_after(3600) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run)
    assert scope.cancelled_caught
    assert watchdog.pings_sent == 0
