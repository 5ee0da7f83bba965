"""Can this host make overlays, and with which WireGuard? File checks only: quick, no root needed.

The kernel module where it is loaded (``/sys/module/wireguard``), otherwise Debian's userspace
``wireguard-go`` with ``/dev/net/tun``; both need ``wg`` (wireguard-tools), ``ip`` (iproute2) and
``nsenter`` (util-linux). ``probe`` answers once per call; the executor asks once, at its first
overlay, and the provider's advert and ``peerd doctor`` ask ``overlay_available``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

TUN = Path("/dev/net/tun")
KERNEL_MODULE = Path("/sys/module/wireguard")
INSTALL_HINT = "apt-get install --no-install-recommends wireguard-tools wireguard-go iproute2"


class Backend(StrEnum):
    KERNEL = "kernel"  # ip link add ... type wireguard
    USERSPACE = "userspace"  # wireguard-go over /dev/net/tun


@dataclass(frozen=True)
class Availability:
    backend: Backend | None  # None: this host cannot make overlays
    detail: str

    @property
    def ok(self) -> bool:
        return self.backend is not None


def probe(tun: Path = TUN, kernel_module: Path = KERNEL_MODULE) -> Availability:
    missing = [tool for tool in ("ip", "wg", "nsenter") if shutil.which(tool) is None]
    if missing:
        return Availability(None, f"missing {', '.join(missing)} ({INSTALL_HINT})")
    if kernel_module.is_dir():
        return Availability(Backend.KERNEL, "WireGuard kernel module")
    if shutil.which("wireguard-go") is None:
        return Availability(None, f"no WireGuard kernel module and no wireguard-go ({INSTALL_HINT})")
    if not tun.exists():
        return Availability(None, f"wireguard-go needs {tun}, which this host lacks (modprobe tun)")
    return Availability(Backend.USERSPACE, f"wireguard-go (userspace) over {tun}")


def overlay_available() -> bool:
    """For the provider's advert: can this host join gang jobs?"""
    return probe().ok
