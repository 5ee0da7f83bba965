"""The ``peerd`` command: ``main()`` parses, runs one command, maps errors to exit codes.

Exit codes: 0 ok; 1 the operation failed (job failed or not placed, unknown
task, a failed doctor check, a config error); 2 usage error; 3 no daemon
answers on the control socket; 130 interrupted. The CLI never imports trio
or libp2p (``peerd run`` does, when it starts the daemon).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from peerd.cli.context import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Context,
    UsageError,
)
from peerd.cli.parser import build_parser
from peerd.control.errors import ControlCallError, DaemonUnreachable
from peerd.control.wire import BAD_ARGS
from peerd.errors import PeerdError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    ctx = Context(args)
    name = f"peerd {args.command_name}"
    try:
        return args.run(ctx)
    except UsageError as exc:
        ctx.note(f"{name}: error: {exc}")
        return EXIT_USAGE
    except DaemonUnreachable as exc:
        ctx.note(f"{name}: cannot reach the daemon: {exc}")
        return EXIT_UNREACHABLE
    except ControlCallError as exc:
        ctx.note(f"{name}: {exc.message or exc.code}")
        return EXIT_USAGE if exc.code == BAD_ARGS else EXIT_FAILED
    except PeerdError as exc:
        ctx.note(f"{name}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        ctx.note(f"{name}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`peerd logs T | head`): quiet, as other tools are.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
