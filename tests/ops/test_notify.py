"""sd_notify from a real `peerd run`: READY=1 only once joined and answering, then watchdog pings.

The daemon is started as systemd would: $NOTIFY_SOCKET names a datagram socket
(bound here, in tmp_path), $WATCHDOG_USEC the watchdog timeout and
$WATCHDOG_PID the daemon's own pid — set by a shell that then ``exec``s the
daemon, so the pid is the daemon's (sd_watchdog_enabled(3) ignores a
watchdog meant for another pid).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.control.client import ControlClient
from peerd.devnet import FAST_CONFIG, free_port

from .harness import OpsNet

DEADLINE = 90.0


@pytest.fixture
def seed() -> Iterator[str]:
    with OpsNet() as net:
        yield net.add_seed().addr


def start_daemon(home: Path, seed: str, notify_path: Path) -> subprocess.Popen[bytes]:
    subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(home), "init"], check=True,
                   capture_output=True)
    (home / "config.toml").write_text(FAST_CONFIG.format(role="provider", port=free_port(), bootstrap=f'"{seed}"'))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    argv = [sys.executable, "-m", "peerd.cli", "--home", str(home), "run"]
    log = (home / "daemon.log").open("ab")
    try:
        return subprocess.Popen(["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh", *argv],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def receive(sock: socket.socket, deadline: float) -> str:
    sock.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        raise AssertionError("no notification before the deadline") from None


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


@pytest.mark.docker  # its providers connect to dockerd
def test_ready_after_join_and_control_socket_then_watchdog_and_stopping(tmp_path: Path, seed: str) -> None:
    notify_path = tmp_path / "notify.sock"
    home = tmp_path / "node"
    home.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        proc = start_daemon(home, seed, notify_path)
        try:
            deadline = time.monotonic() + DEADLINE
            before_ready: list[dict[str, str]] = []
            while "READY" not in (ready := fields(receive(sock, deadline))):
                before_ready.append(ready)
            # Freeze the daemon the moment READY is seen: the control socket must already listen.
            proc.send_signal(signal.SIGSTOP)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(home / "control.sock"))
            finally:
                proc.send_signal(signal.SIGCONT)
            with ControlClient(home / "control.sock", timeout=30) as client:
                status = client.call("status", {})
            assert isinstance(status, dict) and status["peers_connected"] >= 1
            # ...and it had joined: the status line sent with READY counts the seed.
            assert ready["READY"] == "1" and ready["STATUS"].startswith("1 peers"), ready
            assert all("READY" not in m for m in before_ready)

            pings, statuses = 0, 0
            while pings < 3:
                message = fields(receive(sock, deadline))
                pings += message.get("WATCHDOG") == "1"
                statuses += "STATUS" in message
            assert statuses >= 3

            proc.send_signal(signal.SIGTERM)
            while "STOPPING" not in fields(receive(sock, deadline)):
                pass
            assert proc.wait(DEADLINE) == 0
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
