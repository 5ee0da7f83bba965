"""The two kinds of role, one enum each.

``NodeRole`` is what a node is (``node.role`` in its config, ``role`` in its
signed advert): a provider lends its host, a requester only submits, a seed
only bootstraps others. ``TaskRole`` is which side of one task a node is on:
the sender in the negotiation's transition table, and the side a node's store
records a task from. A provider node is on the requester side of the jobs it
submits, so the two never stand in for each other.

Kept apart from ``messages`` so that what must start fast (the CLI reading the
config) can name a role without loading the message types.
"""

from __future__ import annotations

import enum


class NodeRole(enum.StrEnum):
    PROVIDER = "provider"
    SEED = "seed"
    REQUESTER = "requester"


class TaskRole(enum.StrEnum):
    REQUESTER = "requester"
    PROVIDER = "provider"
