"""Images as job data, the provider's side: a carried image received and loaded into dockerd.

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

import logging
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import trio

from peerd.data.blobstore import BlobStoreError, ChunkStore
from peerd.data.imagedata import (
    AHEAD,
    TAR_BLOCK,
    ImageEngine,
    ImageError,
    ImageMismatch,
    pin_key,
    read_file,
)
from peerd.data.jobdata import load_manifest, parse_digest
from peerd.data.transfer import OpenStream, TransferError, fetch
from peerd.errors import PeerdError
from peerd.executor.errors import ExecutorError
from peerd.jobs.taskwire import single_error
from protocol.blobxfer import VerifiedChunk
from protocol.imagelayout import (
    ImageLayoutError,
    chain_ids,
    check_config,
    check_layout,
    diff_ids,
    load_manifest_json,
)
from protocol.manifest import Manifest
from protocol.messages import ImageContent, LeaseTerms

RECEIVED_REPOSITORY = "peerd-received"
HANDOFF_BYTES = 32 << 20  # landed chunk bytes held for docker load; beyond, it reads them back from the store

log = logging.getLogger(__name__)


def _ahead_or_error(nursery: trio.Nursery, source: AsyncIterator[bytes], depth: int = AHEAD,
                    ) -> AsyncIterator[bytes]:
    """``source``'s pieces, read up to ``depth`` ahead by a task in ``nursery``; a PeerdError of ``source``
    is raised in the consumer, after the pieces before it (so a ``docker load`` reading them fails and
    ends, instead of being abandoned mid-stream)."""
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


@dataclass(frozen=True)
class ImageSettings:
    receive: bool = True  # accept images carried as job data
    marks_dir: Path = Path("images")  # <home>/images: one file per received image, its mtime the last use
    io_timeout: float = 30.0


class _Landing:
    """An image's chunks as the fetch lands them in the store, waited for in order by the archive that
    streams into ``docker load``. A failed fetch wakes every waiter, which then raises its error.

    The bytes of a landed chunk are handed to the archive from memory (they were hashed on arrival),
    up to ``HANDOFF_BYTES`` held at a time; beyond that, and for chunks the store held already, the
    archive reads them back from the store."""

    def __init__(self, waiting: dict[bytes, int]) -> None:
        self._sizes = waiting  # digest -> its size, of each chunk the fetch has to move
        self._events = {digest: trio.Event() for digest in waiting}
        self._held: dict[bytes, bytes] = {}  # landed, not yet taken by the archive
        self._held_bytes = 0
        self.failure: PeerdError | None = None
        self.bytes = 0  # chunk bytes landed so far
        self.total = sum(waiting.values())  # chunk bytes to land in all

    def landed(self, chunk: VerifiedChunk) -> None:
        event = self._events.pop(chunk.digest, None)
        if event is not None:
            self.bytes += self._sizes.get(chunk.digest, 0)
            if self._held_bytes + len(chunk.data) <= HANDOFF_BYTES:
                self._held[chunk.digest] = chunk.data
                self._held_bytes += len(chunk.data)
            event.set()

    def take(self, digest: bytes) -> bytes | None:
        """A landed chunk's bytes, if still held in memory (once: later asks read the store)."""
        data = self._held.pop(digest, None)
        if data is not None:
            self._held_bytes -= len(data)
        return data

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
    (each chunk re-hashed as it is read); with ``landing``, each chunk once the fetch has landed it,
    from memory while the landing holds it.
    A layer in ``held`` (indexes) is one dockerd holds already: it goes as an empty file, which
    ``docker load`` does not read (it takes the layer it holds under that chain id)."""
    layers = len(manifest.files) - 1

    def header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    def pad(size: int) -> bytes:
        return bytes(-size % TAR_BLOCK)

    index = load_manifest_json(layers, tag)
    yield header("manifest.json", len(index)) + index + pad(len(index))
    for number, entry in enumerate(manifest.files):
        if number - 1 in held:
            yield header(entry.path, 0)
            continue
        yield header(entry.path, entry.size)
        for digest in entry.chunks:
            data = None
            if landing is not None:
                await landing.wait(digest)
                data = landing.take(digest)  # verified as it arrived
            if data is None:
                data = await chunks.get(digest)  # None if absent or no longer matching its digest
            if data is None:
                raise ImageMismatch(f"a chunk of {entry.path} ({digest.hex()[:16]}) is missing from the chunk "
                                    "store or does not match its digest; the load is aborted")
            yield data
        yield pad(entry.size)
    yield bytes(2 * TAR_BLOCK)


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
        config_bytes = await read_file(self.chunks, config)
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
