"""Process-wide guards for py-libp2p 0.8.1 defects, applied once before a host is built.

Defects and guards are numbered as in docs/py-libp2p.md. Guards that are per host (Noise-only
security, closing the host, timeouts, stream resets, gossip seqno) live with
the code that builds or uses the host (``host.py``, ``streams.py``); the ones
here change module state of the library or check the operating system:

* ``_HAPPY_EYEBALLS_DELAY`` (defect 2): every outbound dial waits a fixed
  250 ms before its first address is even given a chance to finish; set to 0
  here and only here. ``tests/p2p/test_guards.py`` notices if an upgrade
  renames or changes it.
* yamux frames that fit one Noise message (defect 17): yamux writes frames of
  64 KiB plus its 12-byte header, one more than the 65,519 plaintext bytes a
  Noise message holds, so every full frame went out as two Noise messages, the
  second of 17 bytes, each with its own encryption, write and read; frames of
  at most 65,519 bytes cut the CPU of a bulk stream by about a third.
* logging ("Installing and importing" there): on import libp2p's logger stops
  propagating and prints warnings raw to stderr; we make it propagate to the
  application's handlers at WARNING.
* the listen port (defect 11): the TCP transport binds with SO_REUSEPORT, so a
  second daemon on the same port would silently share it; ``check_port_free``
  probes the port without SO_REUSEPORT first and fails clearly.
"""

from __future__ import annotations

import errno
import logging
import socket

import libp2p.network.swarm as _swarm
import libp2p.security.noise.io as _noise_io
import libp2p.stream_muxer.yamux.yamux as _yamux
import multiaddr
from multiaddr.exceptions import ProtocolLookupError

from peerd.p2p.errors import BadAddress, LibraryChanged, PortInUse

# What 0.8.1 ships: a 250 ms head start for the first address of every dial.
UPSTREAM_HAPPY_EYEBALLS_DELAY = 0.250
# What 0.8.1 ships: yamux frames carry up to 64 KiB including the header.
UPSTREAM_YAMUX_MAX_MESSAGE_SIZE = 64 * 1024
# Loggers the library writes to (it also ships the "multiaddr" package).
LIBRARY_LOGGERS = ("libp2p", "multiaddr")

_applied = False


def apply_library_guards(log_level: int = logging.WARNING) -> None:
    """Apply the module-level guards (idempotent)."""
    global _applied
    if _applied:
        return
    disable_dial_delay()
    fit_yamux_frames_to_noise()
    tame_logging(log_level)
    _applied = True


def disable_dial_delay() -> None:
    """Guard 2: no fixed 250 ms wait before a dial's first address may succeed."""
    current = getattr(_swarm, "_HAPPY_EYEBALLS_DELAY", None)
    if not isinstance(current, float):
        raise LibraryChanged(
            "libp2p.network.swarm._HAPPY_EYEBALLS_DELAY is gone or not a float; "
            "re-measure the dial delay (docs/py-libp2p.md, defect 2) before upgrading"
        )
    # The only place this is set: dials then take ~4 ms instead of 251 ms on loopback.
    _swarm._HAPPY_EYEBALLS_DELAY = 0.0


def fit_yamux_frames_to_noise() -> None:
    """Guard 17: a yamux frame (header included) is at most one Noise message's plaintext."""
    current = getattr(_yamux, "MAX_MESSAGE_SIZE", None)
    noise_max = getattr(_noise_io, "MAX_PLAINTEXT_LENGTH", None)
    if not isinstance(current, int) or not isinstance(noise_max, int):
        raise LibraryChanged(
            "libp2p's yamux MAX_MESSAGE_SIZE or Noise MAX_PLAINTEXT_LENGTH is gone or not an int; "
            "re-measure how yamux frames split into Noise messages (docs/py-libp2p.md, defect 17) before upgrading"
        )
    # Read by YamuxStream.write at each frame: frames of header + payload <= noise_max bytes from now on.
    # Only the frames we send change (and the slices of a read-to-end); other peers' frames are read as before.
    _yamux.MAX_MESSAGE_SIZE = min(current, noise_max)


def tame_logging(level: int = logging.WARNING) -> None:
    """Route the library's records to our handlers at ``level``, never raw to stderr.

    Some modules pin their own level (the auto-connector logs every 30 s at
    INFO); those are reset to inherit. Records that report normal events as
    warnings or errors (``_ROUTINE``) are dropped.
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(level)
        logger.propagate = True
    for name, entry in list(logging.root.manager.loggerDict.items()):
        if isinstance(entry, logging.Logger) and name.startswith("libp2p."):
            entry.setLevel(logging.NOTSET)
            entry.handlers.clear()
            entry.propagate = True
    for name in _ROUTINE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RoutineFilter) for f in logger.filters):
            logger.addFilter(_RoutineFilter())


# logger -> (message format, whether its first argument must be empty): normal
# events the library logs as warnings or errors.
_ROUTINE: dict[str, tuple[str, bool]] = {
    # every normal close of a DHT stream (defect 9)
    "libp2p.kad_dht.kad_dht": ("Failed to read DHT message from stream: %s", True),
    # a dial to a peer that is down (the caller gets, and handles, the error)
    "libp2p.transport.tcp.tcp": ("Failed to open TCP stream: %s", False),
    # gossip mesh upkeep: a GRAFT inside the backoff the grafting peer's own
    # PRUNE started (py-libp2p keeps one backoff map for both directions)
    "libp2p.pubsub.gossipsub": ("GRAFT: ignoring request from %s, back off until %d", False),
}


class _RoutineFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        routine = _ROUTINE.get(record.name)
        if routine is None or record.msg != routine[0]:
            return True
        if not routine[1]:
            return False
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        return bool(args and str(args[0]))


def tcp_endpoint(addr: str) -> tuple[str, int]:
    """The (ip, port) of a /ip4|ip6/…/tcp/… multiaddr."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        port = int(maddr.value_for_protocol("tcp"))
    except Exception as exc:  # multiaddr raises a zoo of types for bad text
        raise BadAddress(f"{addr!r} is not a TCP multiaddr: {exc}") from exc
    for proto in ("ip4", "ip6"):
        try:
            ip = maddr.value_for_protocol(proto)
        except ProtocolLookupError:  # not this family
            continue
        if ip:
            return str(ip), port
    raise BadAddress(f"{addr!r} has no /ip4 or /ip6 part")


def check_port_free(addr: str) -> None:
    """Guard 11: raise PortInUse if something already listens on ``addr``'s port.

    The probe sets SO_REUSEADDR (so sockets in TIME_WAIT from our own previous
    run do not count) but not SO_REUSEPORT, so Linux refuses it exactly when a
    listener holds the port. Port 0 (any free port) is not checked.
    """
    ip, port = tcp_endpoint(addr)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"cannot listen on {addr}: port {port} is already in use "
                    "(is another peerd running with this port?)"
                ) from exc
            raise BadAddress(f"cannot listen on {addr}: {exc}") from exc
