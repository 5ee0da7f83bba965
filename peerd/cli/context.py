"""What every CLI command gets: its arguments, the home, the daemon's socket.

Also the CLI's exit codes and ``UsageError`` (exit 2), which commands raise
for arguments argparse could not check by itself. Finding the socket reads one
key of the config (``peerd.home``); only the commands that need the whole
``Config`` (``run``, ``doctor`` without a daemon) load ``peerd.config``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from peerd.control.client import ControlClient
from peerd.errors import ConfigError, PeerdError
from peerd.home import DEFAULT_CONTROL_SOCKET, control_path, control_socket_path, resolve_home

if TYPE_CHECKING:
    from peerd.config import Config

EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed: job failed, not placed, unknown task…
EXIT_USAGE = 2  # bad arguments (argparse's own code too)
EXIT_UNREACHABLE = 3  # no daemon answers on the control socket
EXIT_INTERRUPTED = 130

# Where systemd/peerd.service (RuntimeDirectory=peerd) puts the socket; tried
# when the home has none, so users in the peerd group need no flags.
SYSTEM_SOCKET = Path("/run/peerd/control.sock")


class UsageError(PeerdError):
    """A command-line argument is wrong; the message names the flag."""


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _config: Config | None = None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def home(self) -> Path:
        return resolve_home(getattr(self.args, "home", None))

    def config(self) -> Config:
        if self._config is None:
            from peerd.config import load  # its dataclasses cost a CLI call ~15 ms: only for commands that need it

            self._config = load(self.home)
        return self._config

    def socket_path(self) -> Path:
        """``--socket``, else the config's path, else the system daemon's."""
        flag = getattr(self.args, "socket", None)
        if flag:
            return Path(flag)
        try:
            path = control_socket_path(self.home)
        except ConfigError as exc:  # still reach the daemon (its status says whether it reloaded)
            self.note(f"peerd: warning: {exc}; trying the default control socket")
            path = control_path(self.home, DEFAULT_CONTROL_SOCKET)
        if not os.path.exists(path) and SYSTEM_SOCKET.exists():
            return SYSTEM_SOCKET
        return path

    def client(self) -> ControlClient:
        """A connected client (use it in a ``with``)."""
        client = ControlClient(self.socket_path())
        client.connect()
        return client

    def say(self, text: str) -> None:
        """Human output on stdout."""
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """Progress and diagnostics on stderr, so stdout stays clean."""
        self.err.write(text + "\n")
        self.err.flush()
