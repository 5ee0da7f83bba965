"""The WireGuard adapter: one interface per gang member, made on the host, handed to a container.

``open`` makes the interface in the host's namespace (``wireguard-go -f NAME`` as our own child, or
``ip link add NAME type wireguard``), configures it (``wg set``: key from stdin, listen port, each
peer's key, endpoint, /32 and keepalive), moves it into the network namespace of a process (the
container's holder) and there renames it, addresses it and brings it up (``nsenter --net`` +
``ip -batch``). wireguard-go stays in the host's namespace: its UDP socket is the underlay.
``close`` undoes all of it and is idempotent; ``leftovers``/``remove`` find what a daemon that
died left behind (by the tunnel name prefix) and remove it. Every subprocess runs through trio;
every failure is an ``OverlayError``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from peerd.overlay.commands import inside_script, wg_set
from peerd.overlay.errors import OverlayError
from peerd.overlay.host import Backend

if TYPE_CHECKING:  # the contract's executor package imports this one at run time
    from peerd.executor.contract import OverlaySpec

log = logging.getLogger(__name__)

UAPI_DIR = Path("/var/run/wireguard")
SYS_NET = Path("/sys/class/net")
PROC = Path("/proc")
USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
READY_SECONDS = 5.0  # wireguard-go's interface and UAPI socket appear within this
STOP_SECONDS = 3.0  # after SIGTERM, before SIGKILL
POLL_SECONDS = 0.01
COMMAND_SECONDS = 10.0


@dataclass(eq=False)
class Tunnel:
    name: str  # the host-side name (``commands.tunnel_name``)
    backend: Backend
    process: trio.Process | None = None  # our wireguard-go child; None for the kernel, or after a restart


async def _run(argv: list[str], stdin: bytes = b"") -> None:
    try:
        with trio.fail_after(COMMAND_SECONDS):
            done = await trio.run_process(argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    except trio.TooSlowError:
        raise OverlayError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: no answer in {COMMAND_SECONDS:g}s") from None
    except OSError as exc:
        raise OverlayError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        text = (done.stderr or done.stdout).decode(errors="replace").strip()[-400:]
        raise OverlayError(f"{' '.join(argv[:3])} failed ({done.returncode}): {text}")


def _exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def _uapi(name: str) -> Path:
    return UAPI_DIR / f"{name}.sock"


class WireGuard:
    """Tunnels of one backend (``peerd.overlay.host.probe`` says which)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def open(self, name: str, spec: OverlaySpec, netns_pid: int) -> Tunnel:
        """The configured interface, inside the network namespace of ``netns_pid``."""
        argv, key = wg_set(name, spec)  # checks the spec before anything is made
        script = inside_script(name, spec)
        tunnel = await self._create(name)
        try:
            await _run(argv, key)
            await _run(["ip", "link", "set", "dev", name, "netns", str(netns_pid)])
            await _run(["nsenter", f"--net=/proc/{netns_pid}/ns/net", "ip", "-batch", "-"], script.encode())
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close(tunnel)
            raise
        return tunnel

    async def _create(self, name: str) -> Tunnel:
        if _exists(name) or _uapi(name).exists():
            raise OverlayError(f"interface {name} exists already")
        if self.backend is Backend.KERNEL:
            await _run(["ip", "link", "add", "dev", name, "type", "wireguard"])
            return Tunnel(name, self.backend)
        try:
            process = await trio.lowlevel.open_process(
                ["wireguard-go", "-f", name], env={**os.environ, **USERSPACE_ENV},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise OverlayError(f"cannot run wireguard-go: {exc}") from exc
        tunnel = Tunnel(name, self.backend, process)
        try:
            with trio.fail_after(READY_SECONDS):
                while not (_exists(name) and _uapi(name).exists()):
                    if process.poll() is not None:
                        raise OverlayError(f"wireguard-go {name} exited with {process.returncode} before it was ready")
                    await trio.sleep(POLL_SECONDS)
        except trio.TooSlowError:
            with trio.CancelScope(shield=True):
                await self.close(tunnel)
            raise OverlayError(f"wireguard-go {name} not ready within {READY_SECONDS:g}s") from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close(tunnel)
            raise
        return tunnel

    async def close(self, tunnel: Tunnel) -> None:
        """Stop wireguard-go, remove its UAPI socket and the host-side interface (whichever exist)."""
        if tunnel.process is not None:
            await _stop_child(tunnel.process)
        else:
            for pid in await trio.to_thread.run_sync(_userspace_pids, tunnel.name):
                await _stop_pid(pid)
        await trio.to_thread.run_sync(lambda: _uapi(tunnel.name).unlink(missing_ok=True))
        if _exists(tunnel.name):
            await _run(["ip", "link", "del", "dev", tunnel.name])

    async def remove(self, name: str) -> None:
        """Remove a tunnel by name, whoever made it (after a restart)."""
        await self.close(Tunnel(name, self.backend))


async def _stop_child(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(STOP_SECONDS):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stop_pid(pid: int) -> None:
    """SIGTERM a wireguard-go that is not our child, SIGKILL it if it lingers; wait until it is gone."""
    with trio.CancelScope(shield=True):
        for sig, grace in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, STOP_SECONDS)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            with trio.move_on_after(grace):
                while _alive(pid):
                    await trio.sleep(POLL_SECONDS)
                return
    raise OverlayError(f"wireguard-go pid {pid} survived SIGKILL")


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a parent that is not us)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wireguard_go_processes() -> dict[int, str]:
    """pid -> interface name of every wireguard-go on this host."""
    found: dict[int, str] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a for a in argv if a]
        if argv and os.path.basename(argv[0]) == b"wireguard-go" and len(argv) >= 2 and _alive(int(entry.name)):
            found[int(entry.name)] = argv[-1].decode(errors="replace")
    return found


def _userspace_pids(name: str) -> list[int]:
    return [pid for pid, found in wireguard_go_processes().items() if found == name]


def leftovers(prefix: str) -> set[str]:
    """Blocking: names starting with ``prefix`` of host interfaces, wireguard-go processes and
    UAPI sockets (an interface moved into a container's namespace is not seen here)."""
    names = {n for n in wireguard_go_processes().values() if n.startswith(prefix)}
    if SYS_NET.is_dir():
        names |= {p.name for p in SYS_NET.iterdir() if p.name.startswith(prefix)}
    if UAPI_DIR.is_dir():
        names |= {p.name.removesuffix(".sock") for p in UAPI_DIR.glob(f"{prefix}*.sock")}
    return names
