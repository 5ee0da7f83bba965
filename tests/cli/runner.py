"""Runs the real ``peerd`` CLI in a subprocess (the venv's python, ``-m peerd.cli``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import trio


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PEERD_HOME", "PEERD_IMAGE", "RUNTIME_DIRECTORY")}
    env["PEERD_HOME"] = str(home)
    env.update(extra)
    return env


async def peerd(home: Path, *argv: str, env: dict[str, str] | None = None) -> Ran:
    """``peerd ARGV`` with ``PEERD_HOME=home`` (where the test daemon's socket is)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "peerd.cli", *argv],
            capture_stdout=True, capture_stderr=True, check=False,
            env=env if env is not None else cli_env(home),
        )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())
