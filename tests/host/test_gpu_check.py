"""scripts/gpu-check: what it reads from nvidia-smi, and what it says on a host without a GPU (this one)."""

from __future__ import annotations

import ctypes.util
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check"
LISTING = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5d0f81c3-1111-2222-3333-444455556666)
  MIG 3g.20gb     Device  0: (UUID: MIG-a1b2c3d4-0000-5555-6666-777788889999)
"""


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("peerd_gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("peerd_gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    loader.exec_module(module)
    return module


CHECK = load()


def test_nvidia_smi_listing_and_exactly_the_leased_devices() -> None:
    seen = CHECK.listed(LISTING)
    assert seen == ["GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c", "GPU-5d0f81c3-1111-2222-3333-444455556666",
                    "MIG-a1b2c3d4-0000-5555-6666-777788889999"]
    assert CHECK.seen_matches(("GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c",), seen[:1])
    assert not CHECK.seen_matches(("GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c",), seen[:2])  # one too many
    assert CHECK.seen_matches(("MIG-a1b2c3d4-0000-5555-6666-777788889999",), seen[1:])  # under its parent


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this host has an NVIDIA driver")
def test_on_a_host_without_a_gpu_it_says_so_with_its_own_exit_status(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--json", str(tmp_path / "r.json")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no GPU on this host" in out.stdout
    assert json.loads((tmp_path / "r.json").read_text())["status"] == 2


def test_script_is_executable_with_a_shebang() -> None:
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n") and SCRIPT.stat().st_mode & 0o111
