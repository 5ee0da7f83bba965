"""The overlay package imports on its own, first, in a fresh interpreter: the executor imports it, so it
must not need the executor package at run time (a cycle shows only when a module is imported first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["peerd.overlay.commands", "peerd.overlay.wireguard", "peerd.overlay.host",
                                    "peerd.overlay.keys", "peerd.executor.gangnet"])
def test_imports_first_and_alone(module: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
