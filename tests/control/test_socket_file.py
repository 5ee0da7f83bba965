"""The control socket file: mode, group, unsafe directories, stale and live sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from peerd.control.errors import SocketPathError
from peerd.control.server import ControlServer

from .harness import call
from .stub import StubOps


async def test_socket_is_0660_with_its_directory_group(nursery: trio.Nursery, sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    await nursery.start(ControlServer(path, StubOps()).run)
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == sock_dir.stat().st_gid


async def test_world_writable_directory_is_refused(sock_dir: Path) -> None:
    os.chmod(sock_dir, 0o777)
    with pytest.raises(SocketPathError, match="world-writable"):
        await ControlServer(sock_dir / "control.sock", StubOps()).run()
    assert not (sock_dir / "control.sock").exists()


async def test_missing_directory_is_refused(sock_dir: Path) -> None:
    with pytest.raises(SocketPathError, match="directory unusable"):
        await ControlServer(sock_dir / "nope" / "control.sock", StubOps()).run()


async def test_stale_socket_from_a_dead_daemon_is_replaced(nursery: trio.Nursery, sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert path.exists()
    await nursery.start(ControlServer(path, StubOps()).run)
    status = await call(path, "status")
    assert isinstance(status, dict) and status["role"] == "provider"


async def test_a_live_daemon_is_not_displaced(nursery: trio.Nursery, sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    await nursery.start(ControlServer(path, StubOps()).run)
    with pytest.raises(SocketPathError, match="another peerd daemon"):
        await ControlServer(path, StubOps()).run()
    await call(path, "status")  # the first one still answers on its file


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    path.write_text("precious")
    with pytest.raises(SocketPathError, match="not a socket"):
        await ControlServer(path, StubOps()).run()
    assert path.read_text() == "precious"


async def test_socket_file_is_removed_on_shutdown(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, StubOps()).run)
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()
