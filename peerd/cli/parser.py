"""The ``peerd`` command line: one table of commands, one argparse parser.

Every command takes ``--home DIR`` (else $PEERD_HOME, else ~/.peerd),
``--socket PATH`` (else the config's control socket) and ``--json``, before
or after the command name. Usage errors are one line on stderr, exit 2.
Each command's module is imported only when its subparser is built, so a call
loads the one it runs (``submit`` alone needs ``protocol.jobspec``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from peerd.cli.context import EXIT_USAGE, Context


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (and with it bz2 and lzma).

    argparse builds a help formatter for every argument it adds, and each asks shutil for the
    terminal's width: on a CLI call that never prints help, that import is most of argparse's cost.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = (os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0) or 80
        except (ValueError, OSError):
            columns = 80
    return columns


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, the terminal's width read as shutil reads it (``_columns``)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


def _nothing(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True, slots=True)
class CliCommand:
    """A command: ``run`` and ``arguments`` name functions of ``peerd.cli.<module>``, imported when built."""

    name: str
    help: str
    module: str
    run: str
    arguments: str | None = None

    def functions(self) -> tuple[Callable[[Context], int], Callable[[argparse.ArgumentParser], None]]:
        module = importlib.import_module(f"peerd.cli.{self.module}")
        run: Callable[[Context], int] = getattr(module, self.run)
        arguments: Callable[[argparse.ArgumentParser], None] = (
            getattr(module, self.arguments) if self.arguments else _nothing
        )
        return run, arguments


COMMANDS: tuple[CliCommand, ...] = (
    CliCommand("init", "create the node's home, key and config", "local", "init"),
    CliCommand("run", "run the daemon in the foreground", "local", "run", "run_arguments"),
    CliCommand("status", "the daemon's identity, peers and tasks", "query", "status"),
    CliCommand("peers", "known peers and what they offer", "query", "peers"),
    CliCommand("peer", "one peer: its advert, reputation and history", "query", "peer", "peer_arguments"),
    CliCommand("submit", "submit a job: peerd submit [OPTIONS] -- CMD [ARG ...]", "submit", "run", "arguments"),
    CliCommand("tasks", "recent tasks", "query", "tasks", "limit_arguments"),
    CliCommand("show", "one task in full", "query", "show", "task_argument"),
    CliCommand("logs", "a task's output", "query", "logs", "logs_arguments"),
    CliCommand("get", "download a task's outputs (/out) from its provider", "data", "get", "get_arguments"),
    CliCommand("cancel", "cancel a task", "query", "cancel", "task_argument"),
    CliCommand("receipts", "co-signed receipts", "query", "receipts", "limit_arguments"),
    CliCommand("doctor", "check this host (exit 1 if a check fails)", "query", "doctor"),
    CliCommand("drain", "stop taking work; finish what runs", "query", "drain"),
)


def _common(*, top: bool) -> Parser:
    # On subcommands the defaults are SUPPRESS so they never hide a value
    # given before the command name.
    unset = None if top else argparse.SUPPRESS
    parser = Parser(add_help=False, formatter_class=Formatter)
    parser.add_argument("--home", metavar="DIR", default=unset,
                        help="node home (default $PEERD_HOME, else ~/.peerd)")
    parser.add_argument("--socket", metavar="PATH", default=unset,
                        help="control socket (default from the home's config)")
    parser.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="print one JSON document")
    return parser


_TAKES_VALUE = ("--home", "--socket")


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if the options before it are plainly the common ones; else None.

    Only ``--home DIR``, ``--socket PATH`` (or ``=``-joined) and ``--json`` may come first: anything
    else (``--help``, an abbreviation, a typo) gets None, and the full parser decides as always.
    """
    names = {command.name for command in COMMANDS}
    values_left = 0
    for arg in argv:
        if values_left:
            values_left -= 1
        elif arg in names:
            return arg
        elif arg in _TAKES_VALUE:
            values_left = 1
        elif arg != "--json" and not arg.startswith(tuple(f"{flag}=" for flag in _TAKES_VALUE)):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The parser; given ``argv``, only the subparser of the command it names is built.

    Building all fourteen costs a CLI call tens of milliseconds (argparse looks up translations for
    every parser it creates); the one ``argv`` names parses it exactly as the full parser would.
    """
    wanted = command_named(argv) if argv is not None else None
    parser = Parser(prog="peerd", description="peer-to-peer compute: lend and borrow CPUs and GPUs",
                    parents=[_common(top=True)], formatter_class=Formatter)
    subparsers = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    common = _common(top=False)
    for command in COMMANDS:
        if wanted is not None and command.name != wanted:
            continue
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    parents=[common], formatter_class=Formatter)
        run, arguments = command.functions()
        arguments(sub)
        sub.set_defaults(run=run)
    return parser
