"""A manifest's files, from the chunk store, written into a job's input directory.

``materialize`` is how a provider stages a job's inputs before the executor
mounts them read-only (``InputMount``). It trusts nothing it is given:

- every path is resolved one component at a time below ``dest`` through
  directory descriptors opened with ``O_NOFOLLOW`` (a link planted in ``dest``
  is never followed), and every file is created with ``O_EXCL`` (nothing that
  exists is overwritten), so nothing is written outside ``dest``;
- every chunk must be in the store, hash to its digest and have the length the
  manifest's sizes imply; every file must end at its size;
- modes are masked: directories 0o755, files 0o755 if the manifest gives any
  execute bit, else 0o644 (never setuid, never writable by others).

A failure raises ``StagingError`` and leaves what was written; the caller
removes ``dest`` (it is the task's own directory). Chunk reads go through the
store's async interface; file writes run in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import trio

from peerd.data.safefiles import create
from peerd.errors import PeerdError
from protocol.manifest import FileEntry, Manifest, chunk_count


class StagingError(PeerdError):
    """A manifest could not be written out (a chunk missing or wrong, a path in the way)."""


class ChunkSource(Protocol):
    """What staging reads from: ``peerd.blobstore.ChunkStore`` fits."""

    async def get(self, digest: bytes) -> bytes | None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _expected_length(entry: FileEntry, index: int, chunk_size: int) -> int:
    return min(chunk_size, entry.size - index * chunk_size)


async def _write_file(root: int, entry: FileEntry, chunk_size: int, store: ChunkSource) -> None:
    if len(entry.chunks) != chunk_count(entry.size, chunk_size):
        raise StagingError(f"{entry.path}: {len(entry.chunks)} chunks for {entry.size} bytes")
    try:
        fd = await trio.to_thread.run_sync(create, root, entry)
    except OSError as exc:
        raise StagingError(f"{entry.path}: cannot create: {exc}") from exc
    try:
        for index, digest in enumerate(entry.chunks):
            data = await store.get(digest)
            if data is None:
                raise StagingError(f"{entry.path}: chunk {digest.hex()} is not in the store")
            if len(data) != _expected_length(entry, index, chunk_size) or hashlib.sha256(data).digest() != digest:
                raise StagingError(f"{entry.path}: chunk {index} does not match the manifest")
            await trio.to_thread.run_sync(_write_all, fd, data)
        size = (await trio.to_thread.run_sync(os.fstat, fd)).st_size
        if size != entry.size:
            raise StagingError(f"{entry.path}: {size} bytes written, the manifest says {entry.size}")
    except OSError as exc:
        raise StagingError(f"{entry.path}: cannot write: {exc}") from exc
    finally:
        os.close(fd)


async def materialize(manifest: Manifest, store: ChunkSource, dest: Path) -> None:
    """Write every file of ``manifest`` below the existing directory ``dest``."""
    try:
        root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StagingError(f"{dest}: not a directory to stage into: {exc}") from exc
    try:
        for entry in manifest.files:
            await _write_file(root, entry, manifest.chunk_size, store)
    finally:
        os.close(root)
