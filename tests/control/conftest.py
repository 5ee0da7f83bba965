from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from peerd.control.server import ControlServer

from .harness import sock_dir  # noqa: F401  (a fixture)
from .stub import StubOps


@dataclass
class Daemon:
    path: Path
    ops: StubOps


@pytest.fixture
async def daemon(nursery: trio.Nursery, sock_dir: Path) -> Daemon:  # noqa: F811
    ops = StubOps()
    path = sock_dir / "control.sock"
    await nursery.start(ControlServer(path, ops).run)
    return Daemon(path, ops)
