"""The CLI's parser: built for the one command named, it parses exactly as the full parser does."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from peerd.cli import parser as parser_module
from peerd.cli.parser import COMMANDS, build_parser, command_named

ARGVS = [
    ["status"], ["--home", "x", "status", "--json"], ["--json", "submit", "--image", "b", "--wait", "--", "true"],
    ["--home=status", "peers"], ["--home", "status", "status"], ["logs", "-f", "T"], ["show"], ["submit", "--help"],
    ["--home", "-x", "status"], ["--home", "--json", "status"], ["status", "extra"], ["--socket", "/s", "cancel", "T"],
    ["peer", "--limit", "3", "P"], ["get", "T", "-o", "d"], ["run", "--role", "seed"], ["submit", "--cpus", "x"],
]


def _parsed(argv: list[str], *, lazy: bool) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result: object = sorted(vars(build_parser(argv if lazy else None).parse_args(argv)).items())
        except SystemExit as exc:
            result = ("exit", exc.code)
    return result, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_parser_built_for_one_command_parses_as_the_full_one(argv: list[str]) -> None:
    assert _parsed(argv, lazy=True) == _parsed(argv, lazy=False)


def test_only_the_named_command_is_built() -> None:
    assert command_named(["--home", "status", "--json", "tasks"]) == "tasks"
    built = build_parser(["--socket=/s", "show", "T"])._subparsers
    assert built is not None
    (choices,) = [a.choices for a in built._group_actions if isinstance(a.choices, dict)]
    assert list(choices) == ["show"]


@pytest.mark.parametrize("argv", [[], ["--help"], ["--ho", "x", "status"], ["bogus", "status"], ["--", "status"]])
def test_anything_unclear_gets_every_command(argv: list[str]) -> None:
    assert command_named(argv) is None
    help_text = _parsed(["--help"], lazy=True)[1]
    assert all(command.name in help_text for command in COMMANDS)


@pytest.mark.parametrize("columns", [None, "50", "200", "0", "junk"])
def test_help_is_laid_out_as_argparse_would(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    for argv in (["--help"], ["submit", "--help"]):
        ours = _parsed(argv, lazy=True)
        with monkeypatch.context() as patched:
            patched.setattr(parser_module, "Formatter", argparse.HelpFormatter)
            assert _parsed(argv, lazy=True) == ours
        assert "usage: peerd" in ours[1]


def test_a_submit_imports_no_shutil() -> None:
    probe = ("import sys\nfrom peerd.cli.parser import build_parser\n"
             "argv = ['submit', '--image', 'b', '--wait', '--', 'true']\nbuild_parser(argv).parse_args(argv)\n"
             "print('shutil' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_command_loads_its_own_module_only() -> None:
    probe = ("import sys\nfrom peerd.cli.parser import build_parser\n"
             "build_parser(['status']).parse_args(['status'])\n"
             "print(sorted(m for m in ('peerd.cli.submit', 'peerd.cli.data', 'peerd.cli.local', 'protocol.jobspec')"
             " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
