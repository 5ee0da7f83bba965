"""Fixtures for executor tests: a real dockerd, a unique node id per test, and a sweep that
removes whatever a test left behind (so a failing test cannot leak containers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.executor import DockerExecutor
from tests.executor.helpers import new_node_id, sweep


@pytest.fixture
def node_id() -> Iterator[str]:
    node = new_node_id()
    yield node
    sweep(node)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def files(tmp_path: Path) -> Iterator[BlockingChunkStore]:
    """The chunk store's blocking core: tests read outputs back through it (between jobs)."""
    core = BlockingChunkStore.open(tmp_path / "blobs")
    yield core
    core.close()


@pytest.fixture
def store(files: BlockingChunkStore) -> ChunkStore:
    return ChunkStore(files)


@pytest.fixture
async def executor(nursery: trio.Nursery, node_id: str, workdir: Path, store: ChunkStore) -> DockerExecutor:
    ex = DockerExecutor(node_id, workdir, stop_grace=1, pull_timeout=10, store=store)
    await nursery.start(ex.run)
    return ex
