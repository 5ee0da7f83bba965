"""Under CI a skipped test fails (tests/conftest.py), so a missing Chromium or a non-root run cannot pass unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")
SKIPPING = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("chromium is not installed")
"""


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:trio", "."],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_under_ci_a_skip_fails_with_its_reason(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "1")
    assert out.returncode == 1, out.stdout
    assert "1 failed, 1 passed" in out.stdout
    assert "skipped under CI, which must run every test" in out.stdout and "chromium is not installed" in out.stdout


def test_elsewhere_a_skip_is_a_skip(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "0")
    assert out.returncode == 0 and "1 passed, 1 skipped" in out.stdout, out.stdout
