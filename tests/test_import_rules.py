"""Who may import what, read from the source with ``ast`` (no imports run).

- libp2p (and multiaddr, which comes with it) only under ``peerd/p2p/``;
- the Docker SDK only in ``peerd/executor/engine.py``;
- the CLI, and everything it imports when loaded, without trio, libp2p, multiaddr, docker or cryptography: it
  only talks to the daemon over the control socket and must start fast. Nor ``peerd.config`` (its dataclasses
  and the protocol modules they need): the CLI finds the socket with ``peerd.home``, and loads the whole config
  only in the commands that need it. Imports inside functions (the daemon that ``peerd run`` starts) do not
  count; ``tests/cli/test_daemon_commands.py`` checks the same in a real process.

``protocol/`` has its own, stricter rules in ``tests/protocol/test_isolation.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("peerd", "protocol")

ONLY_IN = {
    "libp2p": "peerd/p2p/",
    "multiaddr": "peerd/p2p/",
    "docker": "peerd/executor/engine.py",
}
NOT_FOR_THE_CLI = {"trio", "libp2p", "multiaddr", "docker", "cryptography"}
OURS_NOT_FOR_THE_CLI = {"peerd.config", "peerd.market", "peerd.daemon", "peerd.host", "peerd.p2p", "peerd.executor"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _statements(body: list[ast.stmt], at_import_time: bool) -> Iterator[ast.stmt]:
    """Every statement in ``body``; with ``at_import_time``, not those in functions or under TYPE_CHECKING."""
    for node in body:
        yield node
        if at_import_time and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if at_import_time and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.orelse, at_import_time)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _statements([s for s in inner if isinstance(s, ast.stmt | ast.ExceptHandler)],
                                       at_import_time)


def imported_names(path: Path, *, at_import_time: bool, root: Path = ROOT) -> set[str]:
    """Absolute dotted names ``path`` imports; ``from a import b`` gives both ``a`` and ``a.b``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), filename=str(path)).body, at_import_time):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def source_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for top in OURS for p in (root / top).rglob("*.py"))


def test_libraries_are_imported_only_where_allowed() -> None:
    stray = []
    for path in source_files():
        where = path.relative_to(ROOT).as_posix()
        for name in imported_names(path, at_import_time=False):
            allowed = ONLY_IN.get(name.split(".")[0])
            if allowed is not None and not where.startswith(allowed):
                stray.append(f"{where} imports {name} (allowed only in {allowed})")
    assert not stray, "\n".join(sorted(set(stray)))


def import_time_closure(start: list[str], root: Path = ROOT) -> dict[str, str]:
    """Every module loaded by importing ``start``, each mapped to the module that first imported it."""
    files = {module_name(p, root): p for p in source_files(root)}
    seen: dict[str, str] = {m: "" for m in start}
    todo = list(start)
    while todo:
        current = todo.pop()
        for name in imported_names(files[current], at_import_time=True, root=root):
            parts = name.split(".")
            # importing a.b.c loads a and a.b too; a name that is not a module is an attribute
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in seen or (parts[0] in OURS and prefix not in files):
                    continue
                seen[prefix] = current
                if prefix in files:
                    todo.append(prefix)
    return seen


def chain(seen: dict[str, str], name: str) -> str:
    links = [name]
    while seen.get(links[-1]):
        links.append(seen[links[-1]])
    return " <- ".join(links)


def test_the_cli_loads_no_daemon_library() -> None:
    cli = [m for m in (module_name(p) for p in source_files()) if m == "peerd.cli" or m.startswith("peerd.cli.")]
    assert "peerd.cli.parser" in cli
    seen = import_time_closure(cli)
    heavy = [chain(seen, m) for m in seen if m.split(".")[0] in NOT_FOR_THE_CLI
             or any(m == ours or m.startswith(ours + ".") for ours in OURS_NOT_FOR_THE_CLI)]
    assert not heavy, "\n".join(sorted(heavy))


def test_the_socket_lookup_is_lighter_still() -> None:
    """``peerd.home`` (the socket's path from the home) needs nothing of ours but the error classes."""
    seen = import_time_closure(["peerd.home"])
    assert {m for m in seen if m.split(".")[0] in OURS} == {"peerd", "peerd.home", "peerd.errors"}


def test_the_scan_notices_what_it_should(tmp_path: Path) -> None:
    pkg = tmp_path / "peerd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "light.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import heavy\n"
        "if TYPE_CHECKING:\n    import docker\n"
        "def later():\n    import libp2p\n"
    )
    (pkg / "heavy.py").write_text("try:\n    import trio\nexcept ImportError:\n    trio = None\n")
    assert imported_names(pkg / "light.py", at_import_time=True, root=tmp_path) == {"typing", "typing.TYPE_CHECKING",
                                                                                   "peerd", "peerd.heavy"}
    assert {"docker", "libp2p"} <= imported_names(pkg / "light.py", at_import_time=False, root=tmp_path)
    (tmp_path / "protocol").mkdir()
    seen = import_time_closure(["peerd.light"], root=tmp_path)
    assert "trio" in seen and chain(seen, "trio") == "trio <- peerd.heavy <- peerd.light"
    assert "libp2p" not in seen and "docker" not in seen
