"""Images as job data: a requester's image carried to a provider, layer by layer.

Requester (``export_image``): ``docker save`` streams from the requester's
dockerd; each file of the archive is cut into chunks as it streams by (hashed,
pinned, stored: nothing is held whole in memory), and at the end the archive's
``manifest.json`` says which file is the config and which are the layers. The
image becomes a manifest of ``config.json`` and ``layers/NNNN.tar``
(``protocol.imagelayout``), so identical layers are identical chunks across
images; its id, the config's digest, goes into ``JobSpec.image_content``, which
the lease binds. The export is pinned under ``export:<hex>`` and reused by the
next job with the same image; it stays pinned while a task that carries it is
live. Once the last such task is final (``RequesterImages.task_done``) the pin
goes: its chunks are then collected like any unreferenced chunk (oldest first,
when the store needs room under ``[storage] blob_quota``), and a later job with
the same image reuses them while they are all still there. A restart releases
every export (live tasks keep their image's chunks by their own pins).

The provider's side (receiving, checking and loading an image) is
``peerd.data.imagereceive``; both sides share the error types, the engine
protocol, the pin keys and the chunk reader defined here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

import trio

from peerd.data.blobstore import BlockingChunkStore, ChunkStore, VerifiedChunk
from peerd.data.jobdata import load_manifest, parse_digest
from peerd.errors import PeerdError
from peerd.executor.errors import ExecutorError
from peerd.jobs.taskwire import single_error
from protocol.errors import ProtocolError
from protocol.imagelayout import (
    CONFIG_PATH,
    check_layout,
    image_id_of,
    layer_path,
)
from protocol.manifest import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, encode_manifest, manifest_id
from protocol.messages import ImageContent, JobSpec

log = logging.getLogger(__name__)

TAR_BLOCK = 512


class ImageError(PeerdError):
    """An image cannot be exported, received or loaded; says why."""


class ImageMismatch(ImageError):
    """The image content is not the image the lease names."""


class ImageEngine(Protocol):
    """What this module needs of a dockerd (``peerd.executor.engine.Engine`` fits)."""

    async def image_id(self, ref: str) -> str | None: ...

    async def repo_digests(self, ref: str) -> tuple[str, ...]: ...

    def save(self, ref: str, *, piece: int = ...) -> AsyncIterator[bytes]: ...

    async def load(self, pieces: AsyncIterator[bytes]) -> list[str]: ...

    async def remove_image(self, ref: str) -> None: ...

    async def layer_chains(self) -> set[str]: ...

    async def images(self, repository: str) -> list[tuple[str, str, int]]: ...


def pin_key(image_id: str) -> str:
    """The chunk store owner of an image's chunks: ``image:<hex>``."""
    return "image:" + image_id.removeprefix("sha256:")


EXPORT_OWNER = "export:"


def export_key(image_id: str) -> str:
    """The chunk store owner of a requester's export of an image: ``export:<hex>`` (kept while a task
    that carries the image is live; ``RequesterImages`` releases it after)."""
    return EXPORT_OWNER + image_id.removeprefix("sha256:")


def _index_key(image_id: str) -> str:
    """The owner that pins only an exported image's manifest (to find it again)."""
    return "image-manifest:" + image_id.removeprefix("sha256:")




# ---------------------------------------------------------------- reading a tar stream
class _Stream:
    """Exact reads from an async iterator of byte pieces."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = bytearray()

    async def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                self._buffer += await self._pieces.__anext__()
            except StopAsyncIteration:
                raise ImageError("docker save ended in the middle of the archive") from None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


AHEAD = 16  # pieces read ahead of their consumer (at most this many MiB in memory)


def _ahead(nursery: trio.Nursery, source: AsyncIterator[bytes], depth: int = AHEAD) -> trio.MemoryReceiveChannel[bytes]:
    """``source``'s pieces, read up to ``depth`` ahead by a task in ``nursery`` (its errors end the nursery)."""
    send, receive = trio.open_memory_channel[bytes](depth)

    async def pump() -> None:
        async with send:
            async for piece in source:
                await send.send(piece)

    nursery.start_soon(pump)
    return receive


def _header_field(block: bytes, start: int, length: int) -> str:
    return block[start:start + length].split(b"\0", 1)[0].decode("utf-8", "replace")


def _header_size(block: bytes) -> int:
    raw = block[124:136]
    if raw[0] & 0x80:  # base-256 (GNU) for large files
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip() or b"0"
    return int(text, 8)


def _pax_path(data: bytes) -> str | None:
    for line in data.split(b"\n"):
        _, _, record = line.partition(b" ")
        key, eq, value = record.partition(b"=")
        if eq and key == b"path":
            return value.decode("utf-8", "replace")
    return None


@dataclass
class _Export:
    """What the export has seen of the archive so far."""

    files: dict[str, tuple[int, tuple[bytes, ...]]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    index: bytes = b""  # manifest.json


BATCH = 8  # chunks hashed, pinned (one transaction) and stored in one worker-thread hop


def _store_batch(owner: str, pieces: list[bytes], files: BlockingChunkStore) -> list[bytes]:
    digests = [hashlib.sha256(piece).digest() for piece in pieces]
    files.pin(owner, digests)  # before put: a put that makes room cannot take them
    for digest, piece in zip(digests, pieces, strict=True):
        files.put_verified(VerifiedChunk(digest, piece))
    return digests


async def _store_member(stream: _Stream, size: int, chunks: ChunkStore, owner: str, chunk_size: int,
                        ) -> tuple[bytes, ...]:
    """A member's bytes as chunks in the store, at most ``BATCH`` chunks in memory at a time."""
    digests: list[bytes] = []
    left = size
    while left:
        batch: list[bytes] = []
        while left and len(batch) < BATCH:
            data = await stream.read(min(chunk_size, left))
            left -= len(data)
            batch.append(data)
        digests += await chunks.run_blocking(partial(_store_batch, owner, batch))
    return tuple(digests)


async def _read_archive(pieces: AsyncIterator[bytes], chunks: ChunkStore, owner: str, chunk_size: int) -> _Export:
    stream = _Stream(pieces)
    seen = _Export()
    long_name: str | None = None
    while True:
        block = await stream.read(TAR_BLOCK)
        if block == bytes(TAR_BLOCK):
            return seen
        name = _header_field(block, 0, 100)
        prefix = _header_field(block, 345, 155) if block[257:262] == b"ustar" else ""
        name = long_name or (f"{prefix}/{name}" if prefix else name)
        long_name = None
        kind, size = block[156:157], _header_size(block)
        padded = -(-size // TAR_BLOCK) * TAR_BLOCK
        if kind in (b"x", b"L"):
            data = (await stream.read(padded))[:size]
            long_name = _pax_path(data) if kind == b"x" else data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        name = name.removeprefix("./")
        if kind in (b"0", b"\0", b"7"):
            if name == "manifest.json":
                seen.index = (await stream.read(padded))[:size]
                continue
            seen.files[name] = (size, await _store_member(stream, size, chunks, owner, chunk_size))
            await stream.read(padded - size)
        elif kind in (b"1", b"2"):
            target = _header_field(block, 157, 100)
            base = name.rpartition("/")[0] if kind == b"2" else ""
            seen.links[name] = os.path.normpath(os.path.join(base, target)) if base else target
            await stream.read(padded)
        else:
            await stream.read(padded)


def _resolve(seen: _Export, name: str) -> tuple[int, tuple[bytes, ...]]:
    for _ in range(8):
        if name in seen.files:
            return seen.files[name]
        if name not in seen.links:
            break
        name = seen.links[name]
    raise ImageError(f"docker save listed {name!r} but the archive does not hold it")


def _image_manifest(seen: _Export, chunk_size: int) -> Manifest:
    try:
        entries = json.loads(seen.index)
        entry = entries[0]
        config_name, layer_names = str(entry["Config"]), [str(n) for n in entry["Layers"]]
    except (ValueError, LookupError, TypeError) as exc:
        raise ImageError(f"docker save wrote no usable manifest.json: {exc}") from exc
    size, digests = _resolve(seen, config_name)
    files = [FileEntry(CONFIG_PATH, 0o644, size, digests)]
    for i, name in enumerate(layer_names):
        size, digests = _resolve(seen, name)
        files.append(FileEntry(layer_path(i), 0o644, size, digests))
    try:
        return Manifest(chunk_size, tuple(files))
    except ProtocolError as exc:
        raise ImageError(f"the image cannot be described as job data: {exc}") from exc


async def read_file(chunks: ChunkStore, entry: FileEntry) -> bytes:
    parts = []
    for digest in entry.chunks:
        data = await chunks.get(digest)
        if data is None:
            raise ImageError(f"a chunk of {entry.path} is missing from the chunk store")
        parts.append(data)
    return b"".join(parts)


async def export_image(
    engine: ImageEngine, ref: str, chunks: ChunkStore, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[ImageContent, Manifest]:
    """Store the image ``ref`` names (in the requester's dockerd) as job data, pinned under ``export:<hex>``."""
    try:
        image = await engine.image_id(ref)
        if image is None:
            raise ImageError(f"image {ref!r} is not in this node's dockerd")
        owner = export_key(image)
        cached = await _cached(chunks, image)
        if cached is not None:
            return cached
        try:
            async with trio.open_nursery() as nursery:  # dockerd streams the next pieces while we store these
                seen = await _read_archive(_ahead(nursery, engine.save(ref)), chunks, owner, chunk_size)
                nursery.cancel_scope.cancel()  # whatever follows the archive's end
        except BaseExceptionGroup as group:
            raise single_error(group, (PeerdError,)) from None
    except ExecutorError as exc:
        raise ImageError(f"cannot export image {ref!r}: {exc}") from exc
    manifest = _image_manifest(seen, chunk_size)
    config = await read_file(chunks, manifest.files[0])
    if image_id_of(config) != image:
        raise ImageError(f"docker save of {ref!r} gave config {image_id_of(config)}, not {image}")
    data = encode_manifest(manifest)
    mid = manifest_id(data)
    await chunks.pin(owner, [mid])
    await chunks.put(mid, data)
    await chunks.keep_only(owner, [mid, *manifest.digests()])  # the archive's other files go
    await chunks.keep_only(_index_key(image), [mid])
    size = sum(entry.size for entry in manifest.files)
    log.info("exported image %s (%s): %d layers, %d bytes", ref, image[:19], len(manifest.files) - 1, size)
    return ImageContent(id=image, manifest="sha256:" + mid.hex(), size=size), manifest


async def _cached(chunks: ChunkStore, image: str) -> tuple[ImageContent, Manifest] | None:
    """An earlier export of this image, if the store still holds all of it (pinned again under
    ``export:<hex>`` first, so the store's room-making cannot take it meanwhile); a stale one is forgotten."""
    for mid in await chunks.pinned(_index_key(image)):
        try:
            manifest = await load_manifest(chunks, mid)
            check_layout(manifest)
            await chunks.pin(export_key(image), [mid, *manifest.digests()])
        except (PeerdError, ProtocolError):
            await chunks.release(_index_key(image))
            return None
        if await chunks.missing(manifest.digests()):  # collected since: exported again
            await chunks.release(_index_key(image))
            return None
        size = sum(entry.size for entry in manifest.files)
        return ImageContent(id=image, manifest="sha256:" + mid.hex(), size=size), manifest
    return None


async def pin_for_task(chunks: ChunkStore, task_id: str, content: ImageContent) -> None:
    """Pin an exported image's manifest and chunks for ``task_id`` (so its provider may fetch them)."""
    mid = parse_digest(content.manifest)
    assert mid is not None  # ImageContent checked it
    manifest = await load_manifest(chunks, mid)
    await chunks.pin(task_id, [mid, *manifest.digests()])


EngineSource = Callable[[], Awaitable[ImageEngine]]


class RequesterImages:
    """The requester's side: which jobs carry their image, and exporting it (once per image while a task
    that carries it is live: the export is pinned under ``export:<hex>`` until the last such task is
    final, then unpinned: collectible when the store needs room, reused by a later job while whole)."""

    def __init__(self, engine: EngineSource, chunks: ChunkStore) -> None:
        self._engine = engine
        self.chunks = chunks
        self.exported = 0  # images exported from dockerd (not counting reuse)
        self.released = 0  # exports unpinned once no live task carried them
        self.carrying: dict[str, set[str]] = {}  # image id -> live tasks that carry it

    async def should_carry(self, ref: str) -> bool:
        """Carry ``ref`` unasked when this node's dockerd holds it and no registry does (it was built
        or loaded here: no provider can pull it). False when this node has no dockerd to ask."""
        try:
            engine = await self._engine()
            return await engine.image_id(ref) is not None and not await engine.repo_digests(ref)
        except ExecutorError:
            return False

    async def carry(self, task_id: str, spec: JobSpec) -> JobSpec:
        """``spec`` with its image as job data, pinned for ``task_id`` (ImageError if it cannot be)."""
        try:
            engine = await self._engine()
            image = await engine.image_id(spec.image)
        except ExecutorError as exc:
            raise ImageError(f"--image-from-requester: this node's dockerd is not reachable: {exc}") from exc
        if image is None:
            raise ImageError(f"image {spec.image!r} is not in this node's dockerd")
        self.carrying.setdefault(image, set()).add(task_id)  # first: no other task's end releases the export now
        try:
            cached = await _cached(self.chunks, image)
            content, _manifest = cached or await export_image(engine, spec.image, self.chunks)
            if cached is None:
                self.exported += 1
            await pin_for_task(self.chunks, task_id, content)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.task_done(task_id)
            raise
        if content.id != image:  # retagged meanwhile: the task carries the image it names now
            self.carrying.setdefault(content.id, set()).add(task_id)
        return replace(spec, image_content=content)

    async def task_done(self, task_id: str) -> None:
        """``task_id`` no longer carries an image: an export no live task carries is released, its chunks
        collectible (the store removes unreferenced chunks oldest first when it needs room); until then a
        later job with the same image reuses them."""
        for image in [i for i, tasks in self.carrying.items() if task_id in tasks]:
            tasks = self.carrying[image]
            tasks.discard(task_id)
            if not tasks:
                del self.carrying[image]
                await self.chunks.release(export_key(image))
                self.released += 1
                log.info("released the export of image %s (no live task carries it)", image[:19])

    async def recover(self) -> None:
        """After a restart no task is known to carry an export: release them all (a live task's own pins
        keep its image's chunks; the small manifest pins stay, to find an export still whole)."""
        for owner in await self.chunks.tasks():
            if owner.startswith(EXPORT_OWNER):
                await self.chunks.release(owner)
