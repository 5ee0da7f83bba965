"""Errors of the control socket, on either end.

The server raises ``SocketPathError`` when it cannot own its socket path; the
client raises ``DaemonUnreachable`` when nothing answers, ``ControlCallError``
when the daemon answered a request with an error, and ``ControlProtocolError``
when what came back was not the control protocol.
"""

from __future__ import annotations

from peerd.errors import PeerdError


class ControlSocketError(PeerdError):
    """Base of every control-socket error."""


class SocketPathError(ControlSocketError):
    """The socket path cannot be used (unsafe directory, in use, not a socket)."""


class DaemonUnreachable(ControlSocketError):
    """No daemon answers on the control socket."""


class ControlProtocolError(ControlSocketError):
    """The other end broke the control protocol."""


class ControlCallError(ControlSocketError):
    """The daemon answered a request with an error ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
