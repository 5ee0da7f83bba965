"""The node's home and its control socket, found without building a ``Config``.

Commands that only talk to the daemon need one value of the configuration, the
control socket's path. ``control_socket_path(home)`` reads that one key from
``<home>/config.toml``, without ``peerd.config``'s dataclasses and the protocol
modules they import, so a CLI call starts faster. ``peerd.config`` uses the
same functions and constants (the file's name, how it is read, the socket's
default), so each is written once, here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from peerd.errors import ConfigError

CONFIG_NAME = "config.toml"
SOCKET_NAME = "control.sock"
DEFAULT_CONTROL_SOCKET = ""  # node.control_socket: "" = $RUNTIME_DIRECTORY's, else the home's SOCKET_NAME


def resolve_home(flag: str | None) -> Path:
    """``--home`` wins, then ``$PEERD_HOME``, then ``~/.peerd``."""
    if flag:
        return Path(flag).expanduser().absolute()
    env = os.environ.get("PEERD_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".peerd"


def read_config_file(home: Path) -> dict[str, object] | None:
    """``<home>/config.toml`` parsed (not checked); None when there is none. Unreadable: ``ConfigError``."""
    path = home / CONFIG_NAME
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself; not a TOMLDecodeError
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}): TOML files are UTF-8 text") from exc
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc or 'nested too deeply'}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def control_path(home: Path, control_socket: str) -> Path:
    """Where the daemon listens, given ``node.control_socket`` (``Config.control_path`` is this)."""
    if control_socket:
        return Path(control_socket)
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    return home / SOCKET_NAME


def control_socket_path(home: Path) -> Path:
    """The control socket of the node at ``home``, reading only ``node.control_socket`` of its config.

    The rest of the file is not checked here (the daemon checks it when it loads); an unreadable file
    or a ``node.control_socket`` that is not a string raises ``ConfigError``.
    """
    source = home / CONFIG_NAME
    node = (read_config_file(home) or {}).get("node", {})
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: [node] must be a table")
    value = node.get("control_socket", DEFAULT_CONTROL_SOCKET)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: node.control_socket: expected a string, got {value!r}")
    return control_path(home, value)
