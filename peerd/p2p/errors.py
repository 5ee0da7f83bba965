"""Errors of the network layer.

Every libp2p, socket or trio resource error that leaves ``peerd.p2p`` is
translated into one of these (``raise X(...) from exc``), so callers never
catch libp2p types.
"""

from __future__ import annotations

from peerd.errors import PeerdError


class P2PError(PeerdError):
    """Base of every network-layer error."""


class LibraryChanged(P2PError):
    """py-libp2p no longer looks like the version our guards were written for."""


class PortInUse(P2PError):
    """A listen port is already taken (possibly by another peerd)."""


class BadAddress(P2PError):
    """A multiaddr is malformed or lacks a part we need (such as /p2p/<id>)."""


class DialError(P2PError):
    """A peer could not be reached (refused, no address, or too slow)."""


class StreamError(P2PError):
    """A stream failed: reset by the peer, closed under us, or a protocol mismatch."""


class StreamTimeout(StreamError):
    """A read or write on a stream took longer than its timeout."""


class NotRunning(P2PError):
    """The service is not running (not started yet, or stopped)."""
