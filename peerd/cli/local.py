"""Commands that work without a running daemon: ``init`` and ``run``.

``run`` imports ``peerd.daemon.node`` (and with it trio and libp2p) only when it
runs, so no other command pays for those imports.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from peerd.cli import output
from peerd.cli.context import Context, UsageError
from protocol.roles import NodeRole

if TYPE_CHECKING:
    from peerd.config import Config


def init(ctx: Context) -> int:
    from peerd.host.identity import init_home  # cryptography: only this command needs it

    home = ctx.home
    signer, created = init_home(home)
    doc = {"peer_id": signer.peer_id, "home": str(home), "created": created}
    if ctx.json:
        output.print_json(doc, ctx.out)
    else:
        state = "initialised" if created else "already initialised; nothing changed"
        ctx.say(output.pairs([("peer id", signer.peer_id), ("home", str(home)), ("", state)]))
    return 0


def run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                        help="listen address (repeatable; replaces node.listen)")
    parser.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                        help="seed to join through, with /p2p/<id> (repeatable; adds to node.bootstrap)")
    parser.add_argument("--seed", action="store_true", help="run as a bootstrap seed")
    parser.add_argument("--role", choices=[r.value for r in NodeRole if r is not NodeRole.SEED],
                        help="override node.role")


def daemon_config(config: Config, *, listen: Sequence[str], bootstrap: Sequence[str],
                  role: str | None, control_socket: str | None = None) -> Config:
    """The config with ``peerd run``'s flags applied."""
    from peerd.config import with_overrides  # not on the path of the commands that only talk to the daemon

    for addr in listen:
        if not addr.startswith("/"):
            raise UsageError(f"--listen: not a multiaddr: {addr!r} (e.g. /ip4/0.0.0.0/tcp/4001)")
    for addr in bootstrap:
        if not addr.startswith("/") or "/p2p/" not in addr:
            raise UsageError(f"--bootstrap: need a multiaddr ending /p2p/<peer id>, got {addr!r}")
    return with_overrides(
        config, "node",
        listen=tuple(listen) if listen else config.node.listen,
        bootstrap=config.node.bootstrap + tuple(a for a in bootstrap if a not in config.node.bootstrap),
        role=NodeRole(role) if role else config.node.role,
        control_socket=control_socket or config.node.control_socket,
    )


def run(ctx: Context) -> int:
    args = ctx.args
    config = daemon_config(ctx.config(), listen=args.listen, bootstrap=args.bootstrap, role=args.role,
                           control_socket=args.socket)
    from peerd.daemon.node import run_daemon  # trio and libp2p: only the daemon needs them

    return run_daemon(config, seed=args.seed)
