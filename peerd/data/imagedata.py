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

Provider (``ProviderImages``): ``refusal`` at admission (receiving turned off,
no room) happens before any byte moves, as does the policy, which sees the
image id (``RunSpec.image_id``). ``ensure`` runs after the lease, before the
container: an image already here under that id is used as is; otherwise the
manifest comes first, then the config, which must hash to the lease's id and
list as many layers as the manifest (else the job fails with
``image_mismatch`` before a layer moves), then the missing layer chunks of the
layers dockerd does not hold already (by chain id: a held layer goes into the
archive as an empty file, which ``docker load`` does not read), streamed into
``docker load`` as they land: a ``docker save`` archive is made of the chunks
in order, each one read back from the chunk store (re-hashed) once the fetch
has stored it, while the next ones still move. A chunk that cannot be had or
no longer matches its digest aborts the load (dockerd gets a broken archive and
keeps nothing) and the job fails saying why. The archive is tagged
``peerd-received:<hex>``, never under the requester's name, so a received image
can never stand in for a local one, and dockerd must then report the lease's id
(else what it loaded is removed). The chunks stay pinned under ``image:<hex>``
(they count against the chunk store's quota; a later image sharing layers
fetches only the others); ``collect`` removes received images least recently
used first, never one a running job uses, until the room asked for is free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from peerd.data.blobstore import BlobStoreError, BlockingChunkStore, ChunkStore, VerifiedChunk
from peerd.data.jobdata import load_manifest, parse_digest
from peerd.data.transfer import OpenStream, TransferError, fetch
from peerd.errors import PeerdError
from peerd.executor.errors import ExecutorError
from peerd.jobs.taskwire import single_error
from protocol.errors import ProtocolError
from protocol.imagelayout import (
    CONFIG_PATH,
    ImageLayoutError,
    chain_ids,
    check_config,
    check_layout,
    diff_ids,
    image_id_of,
    layer_path,
    load_manifest_json,
)
from protocol.manifest import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, encode_manifest, manifest_id
from protocol.messages import ImageContent, JobSpec, LeaseTerms

log = logging.getLogger(__name__)

RECEIVED_REPOSITORY = "peerd-received"
_BLOCK = 512


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


def _ahead_or_error(nursery: trio.Nursery, source: AsyncIterator[bytes], depth: int = AHEAD,
                    ) -> AsyncIterator[bytes]:
    """As ``_ahead``, but a PeerdError of ``source`` is raised in the consumer, after the pieces before it
    (so a ``docker load`` reading them fails and ends, instead of being abandoned mid-stream)."""
    send, receive = trio.open_memory_channel[bytes | PeerdError](depth)

    async def pump() -> None:
        async with send:
            try:
                async for piece in source:
                    await send.send(piece)
            except PeerdError as exc:
                await send.send(exc)

    nursery.start_soon(pump)
    return _relay(receive)


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
        block = await stream.read(_BLOCK)
        if block == bytes(_BLOCK):
            return seen
        name = _header_field(block, 0, 100)
        prefix = _header_field(block, 345, 155) if block[257:262] == b"ustar" else ""
        name = long_name or (f"{prefix}/{name}" if prefix else name)
        long_name = None
        kind, size = block[156:157], _header_size(block)
        padded = -(-size // _BLOCK) * _BLOCK
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


async def _read_file(chunks: ChunkStore, entry: FileEntry) -> bytes:
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
    config = await _read_file(chunks, manifest.files[0])
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


# ---------------------------------------------------------------- the provider
@dataclass(frozen=True)
class ImageSettings:
    receive: bool = True  # accept images carried as job data
    marks_dir: Path = Path("images")  # <home>/images: one file per received image, its mtime the last use
    io_timeout: float = 30.0


class _Landing:
    """An image's chunks as the fetch lands them in the store, waited for in order by the archive that
    streams into ``docker load``. A failed fetch wakes every waiter, which then raises its error."""

    def __init__(self, waiting: dict[bytes, int]) -> None:
        self._sizes = waiting  # digest -> its size, of each chunk the fetch has to move
        self._events = {digest: trio.Event() for digest in waiting}
        self.failure: PeerdError | None = None
        self.bytes = 0  # chunk bytes landed so far
        self.total = sum(waiting.values())  # chunk bytes to land in all

    def landed(self, digest: bytes) -> None:
        event = self._events.pop(digest, None)
        if event is not None:
            self.bytes += self._sizes.get(digest, 0)
            event.set()

    def end(self, failure: PeerdError | None = None) -> None:
        self.failure = failure
        for event in self._events.values():
            event.set()
        self._events.clear()

    async def wait(self, digest: bytes) -> None:
        event = self._events.get(digest)
        if event is not None:
            await event.wait()
        if self.failure is not None:
            raise ImageError(f"the image's layers did not arrive: {self.failure}") from self.failure


async def _archive(manifest: Manifest, chunks: ChunkStore, tag: str, landing: _Landing | None = None,
                   held: Collection[int] = ()) -> AsyncIterator[bytes]:
    """A ``docker save`` archive of an image manifest's files, read from the chunk store as it streams
    (each chunk re-hashed as it is read); with ``landing``, each chunk once the fetch has landed it.
    A layer in ``held`` (indexes) is one dockerd holds already: it goes as an empty file, which
    ``docker load`` does not read (it takes the layer it holds under that chain id)."""
    layers = len(manifest.files) - 1

    def header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    def pad(size: int) -> bytes:
        return bytes(-size % _BLOCK)

    index = load_manifest_json(layers, tag)
    yield header("manifest.json", len(index)) + index + pad(len(index))
    for number, entry in enumerate(manifest.files):
        if number - 1 in held:
            yield header(entry.path, 0)
            continue
        yield header(entry.path, entry.size)
        for digest in entry.chunks:
            if landing is not None:
                await landing.wait(digest)
            data = await chunks.get(digest)  # None if absent or no longer matching its digest
            if data is None:
                raise ImageMismatch(f"a chunk of {entry.path} ({digest.hex()[:16]}) is missing from the chunk "
                                    "store or does not match its digest; the load is aborted")
            yield data
        yield pad(entry.size)
    yield bytes(2 * _BLOCK)


def _held_layers(config: bytes, held_chains: Collection[str]) -> set[int]:
    """Indexes of the config's layers dockerd holds already (by chain id: the layer and all below it)."""
    return {i for i, chain in enumerate(chain_ids(diff_ids(config))) if chain in held_chains}


def _chunk_sizes(manifest: Manifest) -> dict[bytes, int]:
    """Each chunk digest of a manifest -> its size."""
    sizes = {}
    for entry in manifest.files:
        for i, digest in enumerate(entry.chunks):
            sizes[digest] = min(manifest.chunk_size, entry.size - i * manifest.chunk_size)
    return sizes


async def _discard(engine: ImageEngine, tag: str) -> None:
    """Remove what a failed or mismatched load left under ``tag`` (best effort, even while cancelled)."""
    with trio.CancelScope(shield=True), trio.move_on_after(30):
        try:
            await engine.remove_image(tag)
        except ExecutorError as exc:
            log.warning("could not remove %s after a failed load: %s", tag, exc)


async def _relay(receive: trio.MemoryReceiveChannel[bytes | PeerdError]) -> AsyncIterator[bytes]:
    """The pieces ``_ahead_or_error`` passes on; an error it passed on is raised here, in the consumer."""
    async for item in receive:
        if isinstance(item, PeerdError):
            raise item
        yield item


class ProviderImages:
    """The provider's side of carried images (see the module docstring)."""

    def __init__(
        self, engine: Callable[[], ImageEngine], chunks: ChunkStore, open_stream: OpenStream,
        settings: ImageSettings, clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.chunks = chunks
        self.open_stream = open_stream
        self.settings = settings
        self.clock = clock
        self.bytes_fetched = 0  # image chunk bytes moved over the network
        self.loaded = 0
        self.in_use: dict[str, int] = {}  # image id -> jobs using it now
        self.landing: dict[str, _Landing] = {}  # image id -> its load in progress

    def landing_counters(self) -> dict[str, int]:
        """Images being received now: how many, the layer bytes landed so far, the bytes they need in all."""
        return {
            "data.images_landing": len(self.landing),
            "data.images_landing_bytes": sum(one.bytes for one in self.landing.values()),
            "data.images_landing_total": sum(one.total for one in self.landing.values()),
        }

    def refusal(self, content: ImageContent | None) -> str | None:
        """Admission: why this node does not take a carried image, or None."""
        if content is not None and not self.settings.receive:
            return "this provider does not accept images carried by the requester ([images] receive = false)"
        return None

    async def present(self, image_id: str) -> bool:
        return await self._engine().image_id(image_id) == image_id

    def _mark(self, image_id: str) -> Path:
        return self.settings.marks_dir / image_id.removeprefix("sha256:")

    async def _touch(self, image_id: str) -> None:
        mark = trio.Path(self._mark(image_id))
        await mark.parent.mkdir(parents=True, exist_ok=True)
        await mark.touch()
        now = self.clock()
        await trio.to_thread.run_sync(os.utime, self._mark(image_id), (now, now))

    async def ensure(self, terms: LeaseTerms) -> int:
        """Make the leased image present here (ImageError if not); the bytes fetched for it."""
        content = terms.spec.image_content
        assert content is not None
        mid = parse_digest(content.manifest)
        assert mid is not None
        try:
            if await self.present(content.id):
                await self._touch(content.id)
                return 0
            moved = await self._receive(terms, content, mid)
        except (TransferError, BlobStoreError, ExecutorError, OSError) as exc:
            raise ImageError(f"image {content.id[:19]}: {exc}") from exc
        except ImageLayoutError as exc:
            raise ImageMismatch(f"image {content.id[:19]}: {exc}") from exc
        self.bytes_fetched += moved
        return moved

    def use(self, image_id: str) -> None:
        """A job that uses ``image_id`` starts: it cannot be collected until ``done``."""
        self.in_use[image_id] = self.in_use.get(image_id, 0) + 1

    def done(self, image_id: str) -> None:
        """A job that used ``image_id`` ended."""
        left = self.in_use.get(image_id, 0) - 1
        if left > 0:
            self.in_use[image_id] = left
        else:
            self.in_use.pop(image_id, None)

    async def _receive(self, terms: LeaseTerms, content: ImageContent, mid: bytes) -> int:
        task, peer, timeout = terms.task_id, terms.requester, self.settings.io_timeout
        first = await fetch(self.open_stream, [peer], task, [mid], self.chunks, timeout=timeout)
        manifest = await load_manifest(self.chunks, mid)
        layers = check_layout(manifest)
        total = sum(entry.size for entry in manifest.files)
        if total != content.size:
            raise ImageLayoutError(f"{total} bytes of image, the lease says {content.size}", code="image_mismatch")
        config = manifest.files[0]
        head = await fetch(self.open_stream, [peer], task, list(config.chunks), self.chunks, timeout=timeout)
        config_bytes = await _read_file(self.chunks, config)
        check_config(config_bytes, content.id, layers)  # before any layer moves
        held = _held_layers(config_bytes, await self._engine().layer_chains())
        wanted = [d for i, entry in enumerate(manifest.files) if i - 1 not in held for d in entry.chunks]
        await self.chunks.pin(pin_key(content.id), [mid, *wanted])
        sizes = _chunk_sizes(manifest)
        landing = _Landing({digest: sizes[digest] for digest in await self.chunks.missing(wanted)})
        self.landing[content.id] = landing
        try:
            await self._stream_load(terms, content, manifest, landing, held, wanted)
        finally:
            del self.landing[content.id]
        await self._touch(content.id)
        self.loaded += 1
        moved = first.chunk_bytes + head.chunk_bytes + landing.bytes
        log.info("received image %s from %s: %d layers, %d bytes fetched", content.id[:19], peer[:16], layers, moved)
        return moved

    async def _fetch_layers(self, terms: LeaseTerms, wanted: list[bytes], landing: _Landing) -> None:
        """Fetch the ``wanted`` chunks this store lacks, telling ``landing`` of each (and of a failure: not
        raised here, the archive raises it into ``docker load``, which then ends)."""
        try:
            await fetch(self.open_stream, [terms.requester], terms.task_id, wanted,
                        self.chunks, timeout=self.settings.io_timeout, landed=landing.landed)
        except (TransferError, BlobStoreError) as exc:
            landing.end(exc)
            return
        landing.end()

    async def _stream_load(self, terms: LeaseTerms, content: ImageContent, manifest: Manifest,
                           landing: _Landing, held: set[int], wanted: list[bytes]) -> None:
        """``docker load`` of the image as its chunks land (the next are fetched while dockerd takes
        these); afterwards dockerd must hold the lease's id under the received tag, else it is removed."""
        tag = f"{RECEIVED_REPOSITORY}:{content.id.removeprefix('sha256:')}"
        engine = self._engine()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fetch_layers, terms, wanted, landing)
                async with trio.open_nursery() as loading:
                    archive = _archive(manifest, self.chunks, tag, landing, held)
                    await engine.load(_ahead_or_error(loading, archive))
                    loading.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            await _discard(engine, tag)
            error = single_error(group, (PeerdError,))
            raise (landing.failure or error) from None
        loaded = await engine.image_id(tag)
        if loaded != content.id:
            await _discard(engine, tag)
            raise ImageMismatch(f"docker load gave image {loaded}, the lease names {content.id}")

    async def received(self) -> list[tuple[float, str, int]]:
        """(last use, image id, bytes of its chunks) of every received image, least recently used first."""
        rows = []
        for image_id, _tag, _size in await self._engine().images(RECEIVED_REPOSITORY):
            try:
                used = (await trio.Path(self._mark(image_id)).stat()).st_mtime
            except OSError:
                used = 0.0
            pinned = await self.chunks.pinned(pin_key(image_id))
            rows.append((used, image_id, len(pinned)))
        return sorted(rows)

    async def collect(self, need: int, *, keep: Collection[str] = ()) -> list[str]:
        """Remove received images, least recently used first and none in use, until the chunk store
        has ``need`` bytes of room (or none is left to remove); the removed ids."""
        removed = []
        for _used, image_id, _count in await self.received():
            room = await self.chunks.room()
            if room is None or room >= need:
                break
            if image_id in self.in_use or image_id in keep:
                continue
            await self._engine().remove_image(f"{RECEIVED_REPOSITORY}:{image_id.removeprefix('sha256:')}")
            await self.chunks.release(pin_key(image_id))
            await self.chunks.gc()
            await trio.Path(self._mark(image_id)).unlink(missing_ok=True)
            removed.append(image_id)
            log.info("removed received image %s (least recently used) to make room", image_id[:19])
        return removed


# ---------------------------------------------------------------- the requester
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
