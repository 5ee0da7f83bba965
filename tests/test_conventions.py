"""The code's conventions, checked with every test run (so CI checks them): ruff, mypy, doc references.

ruff and mypy come from the ``[test]`` extra; their settings are in pyproject.toml. Each test runs the tool
as a subprocess of this interpreter and fails with its output, so ``pytest tests/test_conventions.py`` is also
the way to run them by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]
TOOL_TIMEOUT_S = 600


def run_tool(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )


def test_ruff_finds_nothing() -> None:
    out = run_tool(["ruff", "check", "--no-cache", "."])
    assert out.returncode == 0, out.stdout + out.stderr


def mypy_env() -> dict[str, str]:
    """The environment for mypy: trio read from its own package, not from trio-typing's stubs.

    libp2p depends on trio-typing, which installs ``trio-stubs`` written for trio 0.22; mypy prefers stub
    packages, so it would judge our code against a trio without ``TaskStatus`` or ``abandon_on_cancel``.
    A directory on MYPYPATH comes first, so a link to the installed trio there makes mypy read trio's
    inline types (pyproject.toml keeps their own errors silent).
    """
    shim = ROOT / ".mypy_cache" / "trio-shim"
    shim.mkdir(parents=True, exist_ok=True)
    link, target = shim / "trio", Path(trio.__file__).resolve().parent
    if not link.is_symlink() or link.resolve() != target:
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return {**os.environ, "MYPYPATH": str(shim)}


def test_mypy_finds_nothing() -> None:
    # Default checks for peerd/, strict for protocol/ (pyproject.toml, [tool.mypy]).
    out = run_tool(["mypy"], env=mypy_env())
    assert out.returncode == 0, out.stdout + out.stderr


# References to notes that live outside this repository. What the code relies on is in docs/.
OUTSIDE_NOTES = re.compile(r"shared/notes|/work/|\bnotes\b", re.IGNORECASE)
SCANNED = ["peerd", "protocol", "scripts", "tests", "systemd", "docs", ".ci"]


def text_files() -> list[Path]:
    files = list(ROOT.glob("*.md"))
    for top in SCANNED:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p for p in files if p != Path(__file__).resolve() and b"\0" not in p.read_bytes()[:4096]]


def test_no_reference_to_notes_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in text_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_NOTES.search(line)
    ]
    assert not cited, "\n".join(cited)


def test_the_notes_scan_would_notice_a_reference() -> None:
    for line in ("# see /work/shared/notes/x.md", "(guards 4 and 5 of the notes)", "(notes: defect 2)"):
        assert OUTSIDE_NOTES.search(line), line
    assert not OUTSIDE_NOTES.search("(docs/py-libp2p.md, defect 2)")


def test_cited_defects_and_guards_exist_in_the_docs() -> None:
    documented = {int(n) for n in re.findall(r"^(\d+)\. \*\*", (ROOT / "docs/py-libp2p.md").read_text(), re.M)}
    assert documented == set(range(1, 18))
    cited = {
        (path.relative_to(ROOT), int(n))
        for path in (ROOT / "peerd").rglob("*.py")
        for n in re.findall(r"\b(?:defects?|guards?) (\d+)", path.read_text(), re.IGNORECASE)
    }
    assert cited, "the scan found no citation at all"
    assert {c for c in cited if c[1] not in documented} == set()


BENCHMARKS = sorted(p.stem for p in (ROOT / "scripts" / "bench").glob("*.py") if p.stem != "p2p_node")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_still_imports_what_it_uses(name: str) -> None:
    # Benchmarks are not tests, so nothing else runs them between `scripts/bench/all` runs: a helper they import
    # that moves (as the CLI helpers did, from tests/integration/netns.py to cli.py) would break them unnoticed.
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / f"{name}.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
