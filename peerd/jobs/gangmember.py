"""A provider's side of a gang job: its overlay endpoint, and what the container gets from the lease.

Pure functions of the signed lease (``gang_env``, ``overlay_spec``), so that
what a rank's container sees follows from what both parties signed, plus the
one stateful piece, ``EndpointPorts``: the UDP ports a provider hands out for
its gang leases' WireGuard endpoints.

The environment contract is torchrun's and SkyPilot's, so an unmodified
``torch.distributed`` program runs across the gang: rank r has the overlay
address 10.99.0.(r+1)/24 on the interface ``OVERLAY_INTERFACE``; rank 0 is the
master, listening on ``MASTER_PORT``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from peerd.executor.contract import OverlayPeer, OverlaySpec
from protocol.gang import split_endpoint
from protocol.messages import LeaseTerms

OVERLAY_INTERFACE = "peerd0"
OVERLAY_PREFIX = "10.99.0."  # rank r is OVERLAY_PREFIX + str(r + 1)
OVERLAY_BITS = 24
MASTER_PORT = 29500
# With --gpus: NCCL over sockets on the overlay (no InfiniBand, no peer-to-peer across hosts).
NCCL_OVERLAY_ENV = {"NCCL_IB_DISABLE": "1", "NCCL_P2P_DISABLE": "1"}


def overlay_ip(rank: int) -> str:
    """Rank ``rank``'s address on the gang's overlay."""
    return f"{OVERLAY_PREFIX}{rank + 1}"


def gang_env(terms: LeaseTerms) -> dict[str, str]:
    """The environment contract of a gang member's container, from its signed lease terms.

    Set by peerd over any variable of the same name in the job's own env.
    """
    gang = terms.gang
    if gang is None:
        raise ValueError("not a gang lease")
    ips = [overlay_ip(member.rank) for member in terms.roster]
    env = {
        "MASTER_ADDR": ips[0],
        "MASTER_PORT": str(MASTER_PORT),
        "RANK": str(gang.rank),
        "WORLD_SIZE": str(gang.size),
        "LOCAL_RANK": "0",
        "GLOO_SOCKET_IFNAME": OVERLAY_INTERFACE,
        "NCCL_SOCKET_IFNAME": OVERLAY_INTERFACE,
        "PEERD_NODE_IPS": ",".join(ips),
        "PEERD_NODE_RANK": str(gang.rank),
        "PEERD_NUM_NODES": str(gang.size),
        "PEERD_GANG_ID": gang.gang_id,
    }
    if terms.spec.gpus:
        env.update(NCCL_OVERLAY_ENV)
    return env


def overlay_spec(terms: LeaseTerms, *, private_key: str, listen_port: int) -> OverlaySpec:
    """This rank's interface on the gang's overlay: its address, its key, and every other member as a peer."""
    gang = terms.gang
    if gang is None:
        raise ValueError("not a gang lease")
    peers = tuple(
        OverlayPeer(public_key=m.public_key, endpoint=m.endpoint, address=overlay_ip(m.rank))
        for m in terms.roster
        if m.rank != gang.rank
    )
    return OverlaySpec(
        interface=OVERLAY_INTERFACE, address=f"{overlay_ip(gang.rank)}/{OVERLAY_BITS}",
        private_key=private_key, listen_port=listen_port, peers=peers,
    )


class NoFreePort(Exception):
    """Every port of the range is held or in use on this host."""


def udp_port_free(host: str, port: int) -> bool:
    """Can a UDP socket bind ``host:port`` now? (Nothing else listens there.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host if host else "", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@dataclass
class EndpointPorts:
    """UDP ports for gang endpoints, from ``first``..``last`` (0, 0: any free port the kernel picks).

    A port is held by a task while its offer is open or its job runs (``live``
    names those tasks), and is handed out only if it also binds now.
    """

    host: str
    first: int = 0
    last: int = 0
    live: Callable[[], Collection[str]] = lambda: ()
    bind_host: str = ""  # where to probe; "" = every address
    _held: dict[str, int] = field(default_factory=dict)

    def endpoint(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{port}"
        if split_endpoint(text) is None:
            raise ValueError(f"not an endpoint: {text!r}")
        return text

    def take(self, task_id: str) -> int:
        live = set(self.live())
        self._held = {t: p for t, p in self._held.items() if t in live}
        held = set(self._held.values())
        if self.first == 0:
            port = self._kernel_port(held)
        else:
            port = next((p for p in range(self.first, self.last + 1)
                         if p not in held and udp_port_free(self.bind_host, p)), 0)
        if not port:
            raise NoFreePort(f"no free UDP port in {self.first}-{self.last} for a gang endpoint")
        self._held[task_id] = port
        return port

    def release(self, task_id: str) -> None:
        self._held.pop(task_id, None)

    def _kernel_port(self, held: set[int]) -> int:
        for _ in range(16):
            family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((self.bind_host, 0))
                port = int(sock.getsockname()[1])
            if port not in held:
                return port
        return 0
