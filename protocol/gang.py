"""Gang jobs on the wire: one job on N providers at once, joined by a private overlay.

A gang job's ``JobSpec.nodes`` is N ≥ 2. The requester asks N distinct
providers, one ``TaskRequest`` each, naming the gang (``GangRef``: its id, its
size and the provider's rank). Each provider's ``Offer`` carries the
WireGuard public key it made for this lease and the UDP endpoint it will
listen on (``OverlayEndpoint``), signed with the offer. The requester's
``Accept`` carries the roster (``RosterMember`` per rank: peer ID, public key,
endpoint) once every rank has offered, and each provider's lease terms bind
the gang and the roster, so every lease names the other members.

Pure data and checks; the order of the negotiation is ``protocol.negotiation``'s.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from .limits import MAX_NODES
from .schema import Struct, check_range, check_text, fail as _fail

WG_KEY_CHARS = 44  # base64 of a 32-byte X25519 key
MAX_ENDPOINT = 262  # "[" + IPv6 or host name (≤ 255) + "]:" + port


def is_wireguard_key(text: str) -> bool:
    """WireGuard's text form of a 32-byte key: canonical base64, 44 characters."""
    if len(text) != WG_KEY_CHARS:
        return False
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and base64.b64encode(raw).decode() == text


def split_endpoint(text: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port), or None if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536 or port != str(int(port)):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    if not host or len(host) > 255 or any(c <= " " or c in "[]/@\x7f" for c in host):
        return None
    return host, int(port)


@dataclass(frozen=True, slots=True)
class GangRef(Struct):
    """Which gang a request or lease belongs to, how many ranks it has, and this one's rank."""

    gang_id: str
    size: int
    rank: int

    def _check(self) -> None:
        check_text(self, "gang_id", 64, nonempty=True)
        check_range(self, "size", 2, MAX_NODES)
        check_range(self, "rank", 0, self.size - 1)


def _check_overlay_fields(obj: object, key: str, endpoint: str) -> None:
    if not is_wireguard_key(key):
        _fail(type(obj), "public_key", "must be a WireGuard public key (44 characters of base64)")
    if len(endpoint) > MAX_ENDPOINT or split_endpoint(endpoint) is None:
        _fail(type(obj), "endpoint", f"must be host:port, got {endpoint!r:.80}")


@dataclass(frozen=True, slots=True)
class OverlayEndpoint(Struct):
    """A provider's side of one gang lease: its WireGuard public key and UDP endpoint."""

    public_key: str
    endpoint: str

    def _check(self) -> None:
        _check_overlay_fields(self, self.public_key, self.endpoint)


@dataclass(frozen=True, slots=True)
class RosterMember(Struct):
    """One rank of a gang as the requester assembled it from the offers."""

    rank: int
    peer: str
    public_key: str
    endpoint: str

    def _check(self) -> None:
        check_range(self, "rank", 0, MAX_NODES - 1)
        check_text(self, "peer", 128, nonempty=True)
        _check_overlay_fields(self, self.public_key, self.endpoint)

    @property
    def overlay(self) -> OverlayEndpoint:
        return OverlayEndpoint(public_key=self.public_key, endpoint=self.endpoint)


def roster_problem(roster: tuple[RosterMember, ...]) -> str | None:
    """Why ``roster`` is not a gang's roster, or None: ranks 0..n-1 in order, n ≥ 2, distinct peers and keys."""
    if not 2 <= len(roster) <= MAX_NODES:
        return f"has {len(roster)} members, not 2..{MAX_NODES}"
    if any(member.rank != i for i, member in enumerate(roster)):
        return "must list ranks 0..n-1 in order"
    if len({m.peer for m in roster}) != len(roster):
        return "names a peer twice"
    if len({m.public_key for m in roster}) != len(roster):
        return "names a public key twice"
    return None
