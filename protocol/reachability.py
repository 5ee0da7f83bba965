"""Whether a node can be dialled, as a node reports it and as its advert shows it.

One enum for the concept. A node learns its own state with the dial-back
check (``protocol.dialback``); others read it off its advert: an advert whose
addresses all go through a relay (``…/p2p-circuit/…``) is a relayed node's.
That needs no new advert field, so adverts stay version 1 on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

CIRCUIT = "/p2p-circuit"


class Reachability(StrEnum):
    PUBLIC = "public"  # peers can dial it directly
    RELAYED = "relayed"  # not dialable, reachable through relay reservations
    UNREACHABLE = "unreachable"  # not dialable and no relay holds it
    UNKNOWN = "unknown"  # not checked yet (a node's first seconds)


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def of_addrs(addrs: Sequence[str]) -> Reachability:
    """What an advert's addresses say: relayed when every one goes through a relay."""
    if not addrs:
        return Reachability.UNREACHABLE
    if all(is_circuit(a) for a in addrs):
        return Reachability.RELAYED
    return Reachability.PUBLIC


HINTS: dict[Reachability, str] = {
    Reachability.PUBLIC: "nothing to do: peers dial this node directly",
    Reachability.RELAYED: ("nothing to do: peers reach this node through relays (small jobs); to take "
                           "large transfers directly, forward the listen port on your router or enable UPnP"),
    Reachability.UNREACHABLE: ("peers cannot reach this node: forward the listen port on your router, "
                               "enable UPnP, or bootstrap from a seed that relays"),
    Reachability.UNKNOWN: "checking: ask again in a few seconds",
}
