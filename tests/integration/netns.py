"""Private test networks in Linux network namespaces, with faults (root only).

``TestNetwork`` builds a "switch" namespace holding a bridge and any number of
host namespaces, each joined to the bridge by a veth pair and given one address
in 10.77.0.0/24. That range exists only inside these namespaces: nothing is
added to the machine's own interfaces, routes or firewall, and no namespace has
a route out, so traffic can only go between them. Every name carries a random
per-network suffix, and ``close()`` kills whatever still runs in the namespaces
and deletes them (their veths go with them), also after a failed test.

Faults, all inside the namespaces:

    cut(host) / restore(host)     the host's switch port down / up (a pulled
                                  cable: packets vanish, nobody gets a RST)
    partition(a, b) / heal()      iptables DROP between two groups of hosts,
                                  both directions, in a chain of our own
    add_router(name) + add_host(name, behind=router)
                                  a home router: a namespace with one leg on
                                  the bridge (the "public" side) and a LAN
                                  bridge of its own (10.78.<n>.0/24) behind
                                  MASQUERADE, with IP forwarding; hosts behind
                                  it reach the public side, nobody there can
                                  open a connection to them (dropped, as home
                                  routers do; TCP hole punching gets through)
    intercept(host, port)         NAT in the host's namespace sends all its TCP
                                  connections with the other hosts (both
                                  directions) to ``port`` in that namespace,
                                  where a transparent ``faultproxy.FaultProxy``
                                  forwards them (and injects delay, resets…)

Processes run in a host with ``host.popen``/``host.run`` (``ip netns exec``);
``host.socket()`` creates a socket inside the namespace for an in-process
proxy. The docker socket is a unix socket, so dockerd serves every namespace.

``NetnsDevNet`` is ``peerd.devnet.DevNet`` with each node in a host of its own
(``netns_devnet()`` builds both and tears both down), and ``transparent_proxy``
makes the FaultProxy for an ``intercept``. ``tests/integration/cli.py`` drives
the nodes through the ``peerd`` CLI (submit, show, wait for a final state or a
lease, the adverts a node holds), for any DevNet.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from peerd.devnet import DevNet, NodeProc
from tests.integration.faultproxy import FaultProxy, listen_socket

SUBNET = "10.77.0"  # /24, private to the namespaces: the "public" side
LAN_PREFIX = "10.78"  # router n's LAN is 10.78.<n>.0/24, its own address there .1
PREFIX_LEN = 24
FAULT_CHAIN = "PEERD-FAULTS"
INTERCEPT_CHAIN = "PEERD-INTERCEPT"
PROXY_MARK = 0x77  # set on a proxy's own upstream sockets so NAT lets them through
NODE_PORT = 4001  # each namespace has its own ports
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace command failed."""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def socket_in(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside ``netns`` (it stays there, whichever thread uses it).

    setns() moves only the calling thread, so a short-lived thread enters the
    namespace, makes the socket and ends; this process's threads stay put.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)

    worker = threading.Thread(target=enter_and_make, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made[0]


@dataclass
class Host:
    """One host namespace on the test network."""

    name: str  # short name, e.g. "requester"
    netns: str  # the namespace's name
    index: int
    switch_port: str  # the bridge-side veth, in the switch namespace (or its router's)
    router: Router | None = None  # the home router this host sits behind, if any

    @property
    def addr(self) -> str:
        if self.router is not None:
            return f"{self.router.lan_prefix}.{self.index}"
        return f"{SUBNET}.{self.index}"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_prefix(), *args, check=check)

    def popen(self, args: Sequence[str], *, stdout: IO[bytes] | int | None = None,
              stderr: IO[bytes] | int | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` in this host, in a session of its own."""
        return subprocess.Popen([*self.exec_prefix(), *args], stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def socket(self, *, mark: int | None = None) -> socket.socket:
        """A TCP socket inside this host (``mark``: SO_MARK, e.g. PROXY_MARK)."""
        sock = socket_in(self.netns)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        return sock

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("iptables", "-w", *args, check=check)


@dataclass
class Router:
    """A home router: ``host`` is its namespace on the public side, ``lan`` its LAN number."""

    host: Host
    lan: int
    members: int = 1  # addresses handed out on the LAN (.1 is the router)

    @property
    def lan_prefix(self) -> str:
        return f"{LAN_PREFIX}.{self.lan}"

    @property
    def gateway(self) -> str:
        return f"{self.lan_prefix}.1"


class TestNetwork:
    """A bridge and host namespaces on 10.77.0.0/24; see the module docstring."""

    __test__ = False  # not a pytest class

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        self.switch = f"pdsw-{self.tag}"
        self.hosts: dict[str, Host] = {}
        self.routers: dict[str, Router] = {}
        self._public = 0  # hosts on the bridge, routers included
        self._partitioned: set[str] = set()
        self._created: list[str] = []
        try:
            sh("ip", "netns", "add", self.switch)
            self._created.append(self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str, *, behind: str | None = None) -> Host:
        """A host on the bridge, or on the LAN of router ``behind`` (then its default route is the router)."""
        if behind is not None:
            return self._add_lan_host(name, self.routers[behind])
        self._public += 1
        index = self._public
        if index > 250:
            raise NetnsError("a test network holds at most 250 hosts")
        host = Host(name, f"pd-{self.tag}-{name}"[:60], index, f"p{index}")
        sh("ip", "netns", "add", host.netns)
        self._created.append(host.netns)
        sh("ip", "link", "add", "eth0", "netns", host.netns, "type", "veth",
           "peer", "name", host.switch_port, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", host.switch_port, "master", "br0", "up")
        self._address(host)
        self.hosts[name] = host
        return host

    def add_router(self, name: str, *, drop_unsolicited: bool = True, symmetric: bool = False) -> Router:
        """A home router on the bridge: MASQUERADE out of eth0, forwarding on, a LAN bridge ``lan0``.

        Like most home routers it silently drops TCP connections nobody inside
        asked for (``drop_unsolicited``); without that its kernel answers them
        with a reset, which also tears down the mapping a hole punch is opening.
        ``symmetric``: every connection out gets a random public port (a
        carrier-grade or "symmetric" NAT), which no hole punch gets through.
        """
        host = self.add_host(name)
        router = Router(host, len(self.routers) + 1)
        sh("ip", "-n", host.netns, "link", "add", "lan0", "type", "bridge")
        sh("ip", "-n", host.netns, "addr", "add", f"{router.gateway}/{PREFIX_LEN}", "dev", "lan0")
        sh("ip", "-n", host.netns, "link", "set", "lan0", "up")
        # A new namespace inherits init_net's IPv4 settings, and dockerd has set ip_forward there; write it only
        # if it is off (inside a container /proc/sys is read-only, so the write would fail for nothing).
        if host.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() != "1":
            host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.iptables("-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE",
                      *(["--random-fully"] if symmetric else []))
        if drop_unsolicited:
            host.iptables("-A", "INPUT", "-i", "eth0", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
        self.routers[name] = router
        return router

    def _add_lan_host(self, name: str, router: Router) -> Host:
        router.members += 1
        if router.members > 250:
            raise NetnsError("a router's LAN holds at most 249 hosts")
        host = Host(name, f"pd-{self.tag}-{name}"[:60], router.members, f"l{router.members}", router)
        sh("ip", "netns", "add", host.netns)
        self._created.append(host.netns)
        sh("ip", "link", "add", "eth0", "netns", host.netns, "type", "veth",
           "peer", "name", host.switch_port, "netns", router.host.netns)
        sh("ip", "-n", router.host.netns, "link", "set", host.switch_port, "master", "lan0", "up")
        self._address(host)
        sh("ip", "-n", host.netns, "route", "add", "default", "via", router.gateway)
        self.hosts[name] = host
        return host

    def _address(self, host: Host) -> None:
        sh("ip", "-n", host.netns, "addr", "add", f"{host.addr}/{PREFIX_LEN}", "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        host.iptables("-N", FAULT_CHAIN)  # partition rules go in a chain of our own
        for chain in ("INPUT", "OUTPUT"):
            host.iptables("-A", chain, "-j", FAULT_CHAIN)

    # ------------------------------------------------------------ faults
    def cut(self, name: str) -> None:
        """Pull the host's cable: its switch port goes down."""
        self._port(name, "down")

    def restore(self, name: str) -> None:
        self._port(name, "up")

    def _port(self, name: str, state: str) -> None:
        host = self.hosts[name]
        where = host.router.host.netns if host.router is not None else self.switch
        sh("ip", "-n", where, "link", "set", host.switch_port, state)

    def partition(self, side_a: Sequence[str], side_b: Sequence[str]) -> None:
        """Drop every packet between the two groups (both directions, on both sides)."""
        for one, others in ((side_a, side_b), (side_b, side_a)):
            for name in one:
                host = self.hosts[name]
                for other in others:
                    peer = self.hosts[other].addr
                    host.iptables("-A", FAULT_CHAIN, "-s", peer, "-j", "DROP")
                    host.iptables("-A", FAULT_CHAIN, "-d", peer, "-j", "DROP")
                self._partitioned.add(name)

    def heal(self) -> None:
        """Remove every partition."""
        for name in sorted(self._partitioned):
            self.hosts[name].iptables("-F", FAULT_CHAIN)
        self._partitioned.clear()

    def intercept(self, name: str, port: int) -> None:
        """Send the host's TCP connections with every other host through ``port`` there.

        Outgoing connections are redirected to 127.0.0.1:``port`` and incoming
        ones to <host addr>:``port``; the proxy listening there finds the
        original destination with SO_ORIGINAL_DST and dials it with
        ``PROXY_MARK`` set, which these rules let through. Only connections
        opened after this call are affected.
        """
        host = self.hosts[name]
        nat = ("-t", "nat")
        host.iptables(*nat, "-N", INTERCEPT_CHAIN)
        host.iptables(*nat, "-A", INTERCEPT_CHAIN, "-m", "mark", "--mark", hex(PROXY_MARK), "-j", "RETURN")
        host.iptables(*nat, "-A", INTERCEPT_CHAIN, "-d", host.addr, "-j", "RETURN")
        host.iptables(*nat, "-A", INTERCEPT_CHAIN, "-p", "tcp", "-d", f"{SUBNET}.0/{PREFIX_LEN}",
                      "-j", "REDIRECT", "--to-ports", str(port))
        host.iptables(*nat, "-A", "OUTPUT", "-j", INTERCEPT_CHAIN)
        host.iptables(*nat, "-A", "PREROUTING", "-p", "tcp", "-s", f"{SUBNET}.0/{PREFIX_LEN}",
                      "-d", host.addr, "-j", "REDIRECT", "--to-ports", str(port))

    # ------------------------------------------------------------ clean-up
    def pids(self) -> list[int]:
        out: list[int] = []
        for netns in self._created:
            done = sh("ip", "netns", "pids", netns, check=False)
            out.extend(int(p) for p in done.stdout.split() if p.isdigit())
        return out

    def close(self) -> None:
        """Kill what still runs in our namespaces, then delete them."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for netns in reversed(self._created):
            sh("ip", "netns", "del", netns, check=False)
        self._created.clear()
        self.hosts.clear()
        self.routers.clear()


def transparent_proxy(host: Host, port: int) -> FaultProxy:
    """A FaultProxy in ``host`` for the connections ``TestNetwork.intercept(host, port)`` redirects."""
    listener = listen_socket(("0.0.0.0", port), host.socket)
    return FaultProxy(listener, target=None, new_socket=lambda: host.socket(mark=PROXY_MARK))


def netns_names() -> set[str]:
    """Every namespace on the machine (for leak checks)."""
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}


# ---------------------------------------------------------------- peerd nodes in namespaces
NETNS_CONFIG = """\
[node]
role = "{role}"
listen = ["/ip4/{addr}/tcp/{port}"]
bootstrap = [{bootstrap}]
log_level = "info"

[pricing]
cpu_hour = {price}

[policy]
max_timeout = "1h"

[limits]
stop_grace = "1s"
drain_grace = "2s"

[network]
advert_interval = "2s"
advert_ttl = "10s"
connect_timeout = "5s"
io_timeout = "5s"
keepalive = "1s"

[requester]
max_attempts = 3
placement_deadline = "60s"
offer_hold = "10s"
provider_timeout = "5s"
"""

DEFAULT_PRICE = 0.01


class NetnsDevNet(DevNet):
    """A DevNet whose every node runs in its own host namespace of ``network``.

    Nodes listen on <host addr>:4001 only; the timeouts are short so that
    faults show within seconds. ``add(..., price=)`` sets a provider's CPU
    price (the cheapest fitting provider is tried first).
    """

    def __init__(self, network: TestNetwork, root: Path | None = None) -> None:
        super().__init__(root)
        self.network = network
        self.prices: dict[str, float] = {}

    def add(self, name: str, role: str, *, port: int = 0, bootstrap: list[str] | None = None,
            price: float = DEFAULT_PRICE, behind: str | None = None) -> NodeProc:
        """Start a node in host ``name`` (created, behind router ``behind`` if given)."""
        if name not in self.network.hosts:
            self.network.add_host(name, behind=behind)
        self.prices[name] = price
        return super().add(name, role, port=port or NODE_PORT, bootstrap=bootstrap)

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    def config_text(self, node: NodeProc) -> str:
        return NETNS_CONFIG.format(
            role="provider" if node.role == "seed" else node.role,
            addr=self.host(node.name).addr, port=node.port,
            bootstrap=", ".join(f'"{b}"' for b in node.bootstrap),
            price=self.prices.get(node.name, DEFAULT_PRICE),
        )

    def command(self, node: NodeProc) -> list[str]:
        # nsenter --net, not ip netns exec: that also gives the process a mount namespace of its own, so the
        # tmpfs a provider mounts on a job's /out would be invisible to dockerd (the job could not write it)
        return ["nsenter", f"--net=/run/netns/{self.host(node.name).netns}", *super().command(node)]


@contextmanager
def netns_devnet() -> Iterator[NetnsDevNet]:
    """A fresh test network and a DevNet on it; both torn down on the way out."""
    with TestNetwork() as network:
        devnet = NetnsDevNet(network)
        try:
            yield devnet
        finally:
            devnet.close()
