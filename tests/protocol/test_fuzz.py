"""A short seeded pass of scripts/fuzz over every target (the long pass is run by hand)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz"


def load_fuzz() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("peerd_fuzz", str(SCRIPT))
    spec = importlib.util.spec_from_loader("peerd_fuzz", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


FUZZ = load_fuzz()


@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_short_seeded_fuzz_pass(target: str) -> None:
    [stats] = FUZZ.run([target], seed=20240601, iterations=2000)
    assert stats.inputs == 2000


def test_fuzz_reports_a_crashing_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(FUZZ, "_roundtrip", broken)
    with pytest.raises(FUZZ.Finding) as info:
        FUZZ.run(["decode"], seed=1, iterations=10)
    assert "KeyError" in info.value.detail and info.value.index == 0
    assert info.value.reproducer  # the input, in hex, comes with it


def test_script_is_executable_with_a_shebang() -> None:
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert SCRIPT.stat().st_mode & 0o111


def test_fuzz_reports_a_hanging_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(data: bytes) -> None:
        while True:
            pass

    monkeypatch.setattr(FUZZ, "_roundtrip", hang)
    monkeypatch.setattr(FUZZ, "INPUT_TIME_LIMIT", 0.2)
    with pytest.raises(FUZZ.Finding) as info:
        FUZZ.run(["decode"], seed=1, iterations=10)
    assert "Hang" in info.value.detail
