"""A dependency-free sd_notify client and the systemd watchdog service.

Owns the daemon's side of systemd's notification protocol (sd_notify(3)):
READY=1 / RELOADING=1 / STOPPING=1 / STATUS=... / WATCHDOG=1 datagrams sent to
the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract socket when
it starts with '@'). When the daemon is not run by systemd (no $NOTIFY_SOCKET)
every call is a no-op returning False, so callers never need to check.

The sockets are datagram sockets on the local host: a send never blocks in
practice, and we open them non-blocking so that a wedged receiver can only make
a notification fail (returning False), never stall the trio loop.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping

import trio

__all__ = ["notify", "notify_socket_address", "watchdog_interval", "Watchdog"]


def notify_socket_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address $NOTIFY_SOCKET names: a path (str), an abstract name (bytes), or None."""
    env = os.environ if environ is None else environ
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock and other schemes are not supported


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify state string (e.g. "READY=1\\nSTATUS=up").

    Returns True when the datagram was sent, False when there is no socket to
    send to or the send failed (a notification is best effort by design).
    """
    address = notify_socket_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout for this process in seconds, or None if none applies.

    Reads $WATCHDOG_USEC; when $WATCHDOG_PID is set the timeout only applies if
    it names this process (as sd_watchdog_enabled(3) specifies).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    pid_text = env.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """Pings WATCHDOG=1 at half systemd's watchdog interval; optionally sends STATUS= lines.

    With no watchdog configured (and no status callable) ``run`` reports started and
    then sleeps forever, so the daemon can start it unconditionally in its nursery.
    """

    def __init__(
        self,
        *,
        status: Callable[[], str] | None = None,
        status_every: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._status = status
        self._status_every = status_every
        self._environ = environ
        self.interval = watchdog_interval(environ)
        self.pings_sent = 0

    @property
    def period(self) -> float:
        """Seconds between wake-ups: half the watchdog interval, or the status period."""
        candidates = [self._status_every] if self._status is not None else []
        if self.interval is not None:
            candidates.append(self.interval / 2)
        return min(candidates) if candidates else math.inf

    def _tick(self) -> None:
        lines = []
        if self.interval is not None:
            lines.append("WATCHDOG=1")
        if self._status is not None:
            status = self._status().replace("\n", " ")
            lines.append(f"STATUS={status}")
        if lines and notify("\n".join(lines), self._environ) and self.interval is not None:
            self.pings_sent += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping until cancelled. The first ping is sent before reporting started."""
        period = self.period
        if period == math.inf:
            task_status.started()
            await trio.sleep_forever()
        self._tick()
        task_status.started()
        while True:
            await trio.sleep(period)
            self._tick()
