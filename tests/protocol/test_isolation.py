"""protocol/ stays sans-IO: it imports only the stdlib, msgpack and cryptography; no I/O and no clock.

The rules for peerd/ (where libp2p and docker may be imported, what the CLI may load) are in
tests/test_import_rules.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"

FORBIDDEN_MODULES = ["trio", "libp2p", "docker", "pynvml", "sqlite3", "socket", "asyncio", "threading", "peerd"]

ALLOWED_IMPORTS = {
    "__future__", "base64", "binascii", "collections", "dataclasses", "enum", "hashlib", "math", "re", "struct",
    "types", "typing",
    "msgpack", "cryptography", "json",
}


def test_importing_protocol_pulls_in_no_io_library() -> None:
    code = (
        "import sys\n"
        "import protocol, protocol.negotiation, protocol.control, protocol.signing\n"
        f"print(sorted(m for m in {FORBIDDEN_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROTOCOL.parent
    )
    assert out.stdout.strip() == "[]", out.stdout


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")  # dynamic imports are not allowed at all
    return roots


def test_every_protocol_module_imports_only_allowed_modules() -> None:
    files = sorted(PROTOCOL.glob("*.py"))
    assert {f.name for f in files} >= {"codec.py", "negotiation.py", "control.py", "signing.py"}
    for path in files:
        stray = imported_roots(path) - ALLOWED_IMPORTS
        assert not stray, f"{path.name} imports {sorted(stray)}"


def test_the_scan_would_notice_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom trio import sleep\nfrom . import codec\n")
    assert imported_roots(bad) - ALLOWED_IMPORTS == {"time", "trio"}


def test_the_allowlist_admits_no_io_library_and_no_clock() -> None:
    # time is passed in (``now=``) by the caller; the machines never read a clock themselves
    assert ALLOWED_IMPORTS.isdisjoint({*FORBIDDEN_MODULES, "time", "datetime", "os", "subprocess", "random"})
