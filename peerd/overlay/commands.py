"""What is asked of ``wg`` and ``ip`` for one overlay, and the names tunnels get. Pure: no I/O.

Every field of an ``OverlaySpec`` is checked here before it reaches a command line or an
``ip -batch`` script (a newline in an interface name would be a second command).
Tunnel names: ``pw`` + 5 hex digits of the node id's hash + 8 of the task id's = 15 characters,
the kernel's limit; the node part is what ``recover`` looks for, so two daemons on one host never
remove each other's tunnels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from typing import TYPE_CHECKING

from peerd.overlay.errors import OverlayError
from peerd.overlay.keys import KEY_BYTES, is_public_key

if TYPE_CHECKING:  # the contract's executor package imports this one at run time
    from peerd.executor.contract import OverlaySpec

PREFIX = "pw"
MTU = 1420  # WireGuard's default: 1500 minus its IPv4 + UDP + header overhead
KEEPALIVE_SECONDS = 25  # keeps NAT mappings on the underlay open
MAX_PEERS = 256
_IFNAME = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def _digest(text: str, digits: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def node_prefix(node_id: str) -> str:
    """The start of every tunnel name this node makes."""
    return PREFIX + _digest(node_id, 5)


def tunnel_name(node_id: str, task_id: str) -> str:
    """The host-side interface (and wireguard-go instance) name of a task's overlay."""
    return node_prefix(node_id) + _digest(task_id, 8)


def _endpoint(text: object) -> str:
    if not isinstance(text, str):
        raise OverlayError(f"peer endpoint must be 'host:port', got {text!r:.60}")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise OverlayError(f"peer endpoint {text!r:.60} must be 'host:port'")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise OverlayError(f"peer endpoint host {host!r:.60} is neither an address nor a host name") from None
    return text


def _peer_address(text: object) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(text)  # type: ignore[arg-type]
    except ValueError:
        raise OverlayError(f"peer overlay address {text!r:.60} is not an IP address") from None
    if not isinstance(address, ipaddress.IPv4Address):
        raise OverlayError(f"peer overlay address {text!r:.60} is not IPv4")
    return address


def _private_key(text: object) -> str:
    try:
        raw = base64.b64decode(text, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, ValueError, TypeError):
        raise OverlayError("the overlay's private key is not base64") from None
    if len(raw) != KEY_BYTES:
        raise OverlayError("the overlay's private key is not 32 bytes")
    return str(text)


def check_spec(spec: OverlaySpec) -> ipaddress.IPv4Interface:
    """The spec's own address, once every field is known to be usable; OverlayError otherwise."""
    if not isinstance(spec.interface, str) or not _IFNAME.fullmatch(spec.interface):
        raise OverlayError(f"interface name {spec.interface!r:.60} must match {_IFNAME.pattern}")
    try:
        own = ipaddress.ip_interface(spec.address)
    except ValueError:
        raise OverlayError(f"overlay address {spec.address!r:.60} is not an address/prefix") from None
    if not isinstance(own, ipaddress.IPv4Interface):
        raise OverlayError(f"overlay address {spec.address!r:.60} is not IPv4")
    _private_key(spec.private_key)
    if not isinstance(spec.listen_port, int) or not 0 < spec.listen_port < 65536:
        raise OverlayError(f"listen port {spec.listen_port!r} is not a UDP port")
    if len(spec.peers) > MAX_PEERS:
        raise OverlayError(f"at most {MAX_PEERS} peers, got {len(spec.peers)}")
    seen = {own.ip}
    for peer in spec.peers:
        if not is_public_key(peer.public_key):
            raise OverlayError(f"peer public key {peer.public_key!r:.60} is not a WireGuard key")
        _endpoint(peer.endpoint)
        address = _peer_address(peer.address)
        if address in seen or address not in own.network:
            raise OverlayError(f"peer address {address} is repeated or outside {own.network}")
        seen.add(address)
    return own


def wg_set(name: str, spec: OverlaySpec) -> tuple[list[str], bytes]:
    """``wg set`` arguments and its stdin (the private key: it never touches a file or argv)."""
    check_spec(spec)
    argv = ["wg", "set", name, "private-key", "/dev/stdin", "listen-port", str(spec.listen_port)]
    for peer in spec.peers:
        argv += [
            "peer", peer.public_key, "endpoint", peer.endpoint,
            "allowed-ips", f"{_peer_address(peer.address)}/32",
            "persistent-keepalive", str(KEEPALIVE_SECONDS),
        ]
    return argv, spec.private_key.encode() + b"\n"


def inside_script(name: str, spec: OverlaySpec) -> str:
    """The ``ip -batch`` script run in the container's network namespace: rename the moved
    interface to the name the job sees, give it its address and bring it up."""
    own = check_spec(spec)
    return "\n".join([
        f"link set dev {name} name {spec.interface}",
        f"address add {own.with_prefixlen} dev {spec.interface}",
        f"link set dev {spec.interface} mtu {MTU} up",
        "",
    ])
