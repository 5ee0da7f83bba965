"""The engine adapter against the host's dockerd: what ``Engine.save`` hands over."""

from __future__ import annotations

import subprocess

import pytest

from peerd.executor.engine import Engine
from tests.integration.dockerd import BASE

pytestmark = pytest.mark.docker


async def test_save_hands_over_whole_pieces_not_dockerds_small_chunks() -> None:
    engine = await Engine.connect()
    try:
        pieces = [piece async for piece in engine.save(BASE, piece=256 << 10)]
    finally:
        engine.close()
    archive = b"".join(pieces)
    assert len(pieces) > 1 and all(len(piece) >= 256 << 10 for piece in pieces[:-1])
    assert len(archive) == len(subprocess.run(["docker", "save", BASE], capture_output=True, check=True).stdout)
    assert archive.endswith(bytes(1024))  # a whole tar: its two zero blocks end it
