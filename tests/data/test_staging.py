"""Staging a manifest's files from the chunk store into a job's input directory."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.data.manifests import build_manifest, import_directory
from peerd.data.staging import StagingError, materialize
from protocol.manifest import MIN_CHUNK_SIZE, FileEntry, Manifest

CS = MIN_CHUNK_SIZE


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*")) if p.is_file()
    }


async def test_a_directory_round_trips_through_the_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "big").write_bytes(os.urandom(2 * CS + 7))
    (src / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o4777)  # setuid and world-writable: masked
    (src / "empty").write_bytes(b"")
    files = BlockingChunkStore.open(tmp_path / "blobs")
    try:
        _, manifest = import_directory(src, files, "t1", chunk_size=CS)
        dest = tmp_path / "dest"
        dest.mkdir()
        await materialize(manifest, ChunkStore(files), dest)
    finally:
        files.close()
    assert tree(dest) == {
        "d/e/big": ((src / "d" / "e" / "big").read_bytes(), 0o644),
        "empty": (b"", 0o644),
        "run.sh": (b"#!/bin/sh\n", 0o755),
    }
    assert build_manifest(dest, chunk_size=CS).files == tuple(
        FileEntry(f.path, 0o755 if f.mode & 0o111 else 0o644, f.size, f.chunks) for f in manifest.files
    )


class Chunks:
    """An in-memory chunk source (what the store would answer)."""

    def __init__(self, chunks: dict[bytes, bytes]) -> None:
        self.chunks = chunks

    async def get(self, digest: bytes) -> bytes | None:
        return self.chunks.get(digest)


def one_file(tmp_path: Path, path: str, data: bytes) -> tuple[Manifest, Chunks]:
    src = tmp_path / "one"
    src.mkdir(exist_ok=True)
    (src / "f").write_bytes(data)
    built = build_manifest(src, chunk_size=CS)
    entry = built.files[0]
    chunks = {hashlib.sha256(data[i:i + CS]).digest(): data[i:i + CS] for i in range(0, len(data), CS)}
    return Manifest(CS, (FileEntry(path, entry.mode, entry.size, entry.chunks),)), Chunks(chunks)


async def test_a_planted_link_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").symlink_to(outside)
    manifest, chunks = one_file(tmp_path, "d/f", b"data")
    with pytest.raises(StagingError):
        await materialize(manifest, chunks, dest)
    assert list(outside.iterdir()) == []


async def test_an_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_bytes(b"mine")
    manifest, chunks = one_file(tmp_path, "f", b"theirs")
    with pytest.raises(StagingError):
        await materialize(manifest, chunks, dest)
    assert (dest / "f").read_bytes() == b"mine"


async def test_missing_or_wrong_chunks_are_refused(tmp_path: Path) -> None:
    manifest, chunks = one_file(tmp_path, "f", b"x" * (CS + 1))
    (tmp_path / "a").mkdir()
    with pytest.raises(StagingError, match="not in the store"):
        await materialize(manifest, Chunks({}), tmp_path / "a")
    first, second = manifest.files[0].chunks
    swapped = Chunks({first: chunks.chunks[second], second: chunks.chunks[first]})
    (tmp_path / "b").mkdir()
    with pytest.raises(StagingError, match="does not match"):
        await materialize(manifest, swapped, tmp_path / "b")


async def test_the_destination_must_be_a_real_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    manifest, chunks = one_file(tmp_path, "f", b"data")
    with pytest.raises(StagingError):
        await materialize(manifest, chunks, tmp_path / "link")
