"""A job's input directory → a manifest and its chunks in the chunk store.

``build_manifest`` walks a directory without following links and lists every
regular file; a symlink, device, FIFO or socket, a name that is not UTF-8, or a
tree over the limits is refused with ``ManifestBuildError`` naming the path
(nothing is silently left out). Files are opened with ``O_NOFOLLOW``, so a file
swapped for a link during the walk is refused too.

``import_directory`` stores a directory for a task: it builds the manifest,
pins the manifest id and every chunk digest for the task *first* (so garbage
collection, which ``put`` may run to make room, cannot remove a chunk of this
import), then reads the files again and stores each chunk, refusing a file
that changed in between. Everything here blocks: run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from peerd.data.blobstore import BlockingChunkStore
from peerd.errors import PeerdError
from protocol.errors import ProtocolError
from protocol.manifest import (
    DEFAULT_CHUNK_SIZE,
    MAX_COMPONENT_BYTES,
    PROTOCOL_LIMITS,
    FileEntry,
    Manifest,
    ManifestLimits,
    encode_manifest,
    manifest_id,
)


class ManifestBuildError(PeerdError):
    """A directory cannot be described by a manifest (links, special files, limits)."""


class TreeTooLarge(ManifestBuildError):
    """The files under the directory total more than ``limits.max_total_size`` bytes."""


def _walk(
    root: Path, rel: str, depth: int, limits: ManifestLimits, skipped: list[str] | None = None,
) -> Iterator[tuple[str, Path]]:
    """Yield (manifest path, file path) for every regular file, sorted; refuse anything else
    (or, given ``skipped``, list it there and go on)."""
    if depth > limits.max_depth:
        raise ManifestBuildError(f"{root / rel}: deeper than {limits.max_depth} levels")
    with os.scandir(root / rel if rel else root) as entries:
        items = sorted(entries, key=lambda e: e.name)
    for entry in items:
        name = entry.name
        path = f"{rel}/{name}" if rel else name
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            _refuse(f"{entry.path!r}: file name is not UTF-8", path, skipped)
            continue
        if len(name.encode("utf-8")) > MAX_COMPONENT_BYTES:
            _refuse(f"{entry.path}: name longer than {MAX_COMPONENT_BYTES} bytes", path, skipped)
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            yield from _walk(root, path, depth + 1, limits, skipped)
        elif stat.S_ISREG(mode):
            yield path, Path(entry.path)
        else:
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or directory"
            _refuse(f"{entry.path}: {kind}; job data may hold only files and directories", path, skipped)


def _refuse(problem: str, path: str, skipped: list[str] | None) -> None:
    if skipped is None:
        raise ManifestBuildError(problem)
    skipped.append(path.encode("utf-8", "backslashreplace").decode("utf-8"))


def read_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    """The file's chunks, read through a descriptor opened without following links."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ManifestBuildError(f"{path}: cannot open: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ManifestBuildError(f"{path}: not a regular file")
        while chunk := fh.read(chunk_size):
            yield chunk


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode) & 0o777


def build_manifest(
    root: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE, limits: ManifestLimits = PROTOCOL_LIMITS,
    skipped: list[str] | None = None,
) -> Manifest:
    """Describe every file under ``root`` (read once, hashed, not stored). Given ``skipped``,
    links, special files and unusable names are listed there instead of refused."""
    files: list[FileEntry] = []
    total = 0
    try:
        for rel, path in _walk(root, "", 1, limits, skipped):
            if len(files) == limits.max_files:
                raise ManifestBuildError(f"{root}: more than {limits.max_files} files")
            digests, size = [], 0
            for chunk in read_chunks(path, chunk_size):
                digests.append(hashlib.sha256(chunk).digest())
                size += len(chunk)
                if total + size > limits.max_total_size:
                    raise TreeTooLarge(f"{root}: more than {limits.max_total_size} bytes")
            total += size
            files.append(FileEntry(rel, _mode(path), size, tuple(digests)))
        manifest = Manifest(chunk_size, tuple(files))
        encode_manifest(manifest)  # refuses one over the encoded-size limit
    except ProtocolError as exc:
        raise ManifestBuildError(f"{root}: {exc}") from exc
    except OSError as exc:
        raise ManifestBuildError(f"{root}: {exc}") from exc
    return manifest


def store_chunks(root: Path, manifest: Manifest, put: Callable[[bytes, bytes], object]) -> None:
    """Read ``root`` again and ``put`` every chunk, checking it against ``manifest``."""
    for entry in manifest.files:
        path = root / entry.path
        count = 0
        for i, chunk in enumerate(read_chunks(path, manifest.chunk_size)):
            digest = hashlib.sha256(chunk).digest()
            if i >= len(entry.chunks) or digest != entry.chunks[i]:
                raise ManifestBuildError(f"{path}: changed while it was being imported")
            put(digest, chunk)
            count += 1
        if count != len(entry.chunks):
            raise ManifestBuildError(f"{path}: changed while it was being imported")


def import_directory(
    root: Path, store: BlockingChunkStore, task_id: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
    limits: ManifestLimits = PROTOCOL_LIMITS,
) -> tuple[bytes, Manifest]:
    """Build, pin and store ``root`` for ``task_id``; returns (manifest id, manifest)."""
    manifest = build_manifest(root, chunk_size=chunk_size, limits=limits)
    data = encode_manifest(manifest)
    mid = manifest_id(data)
    store.pin(task_id, [mid, *manifest.digests()])
    store.put(mid, data)
    store_chunks(root, manifest, store.put)
    return mid, manifest
