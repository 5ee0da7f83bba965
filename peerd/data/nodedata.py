"""Job data wiring for the node: the chunk store, the blob protocol, output retention.

The composition root (``peerd.daemon.node``) opens the chunk store with the state
store (``open_chunks``), hands it to the executor (outputs become manifests
pinned for their task) and to ``ProviderData`` / ``RequesterData``, and once
p2p runs, ``start_job_data`` serves the store on ``/peerd/blob/1.0.0`` to the
parties of each lease and starts ``OutputRetention``. ``BlobDialer`` opens blob
streams through p2p, which starts after the provider's services: it is bound
when p2p exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from peerd.config import Config
from peerd.daemon.wiring import chunk_store_from, data_settings_from
from peerd.data.blobstore import ChunkStore
from peerd.data.imagedata import ImageEngine, RequesterImages
from peerd.data.imagereceive import ProviderImages
from peerd.data.jobdata import OutputRetention, ProviderData
from peerd.data.requestdata import RequesterData
from peerd.data.transfer import BlobService, blob_opener, lease_access, register_blob_protocol
from peerd.executor.docker import DockerExecutor
from peerd.executor.engine import Engine
from peerd.jobs.taskwire import ByteStream
from peerd.p2p.service import P2PService
from peerd.state.store import Store


@asynccontextmanager
async def open_chunks(config: Config) -> AsyncIterator[ChunkStore]:
    """The node's chunk store (``<home>/blobs``, ``storage.blob_quota``), closed on exit."""
    place = chunk_store_from(config)
    chunks = await ChunkStore.open(place.root, place.quota)
    try:
        yield chunks
    finally:
        with trio.CancelScope(shield=True):
            await chunks.close()


class BlobDialer:
    """``transfer.OpenStream`` over p2p, usable before p2p exists (bound once it does)."""

    def __init__(self) -> None:
        self.p2p: P2PService | None = None

    async def __call__(self, peer: str) -> ByteStream:
        assert self.p2p is not None, "BlobDialer used before p2p started"
        return await blob_opener(self.p2p)(peer)  # direct only, unless [relay] allow_data


@dataclass(frozen=True, slots=True)
class JobData:
    """The node's job-data services (``Services.data``)."""

    chunks: ChunkStore
    retention: OutputRetention
    requester: RequesterData | None  # None on a seed
    blobs: BlobService
    provider: ProviderData | None = None  # the provider role only
    images: RequesterImages | None = None  # None on a seed
    provider_images: ProviderImages | None = None  # the provider role only

    def counters(self) -> dict[str, int]:
        """Bytes of job data moved, for ``peerd status``."""
        landing = self.provider_images.landing_counters() if self.provider_images else {
            "data.images_landing": 0, "data.images_landing_bytes": 0, "data.images_landing_total": 0}
        return {
            "data.images_fetched_bytes": self.provider_images.bytes_fetched if self.provider_images else 0,
            "data.images_loaded": self.provider_images.loaded if self.provider_images else 0,
            **landing,
            "data.images_exported": self.images.exported if self.images else 0,
            "data.images_exports_released": self.images.released if self.images else 0,
            "data.inputs_fetched_bytes": self.provider.bytes_fetched if self.provider else 0,
            "data.outputs_fetched_bytes": self.requester.bytes_fetched if self.requester else 0,
            "data.served_bytes": self.blobs.counters.bytes,
            "data.served_chunks": self.blobs.counters.chunks,
            "data.released_tasks": self.retention.released,
        }


async def start_job_data(
    nursery: trio.Nursery, config: Config, chunks: ChunkStore, store: Store, p2p: P2PService, dialer: BlobDialer,
    *, active: Callable[[], Collection[str]], with_requester: bool, clock: Callable[[], float],
    provider: ProviderData | None = None, provider_images: ProviderImages | None = None,
    executor: DockerExecutor | None = None,
) -> JobData:
    """Serve the chunk store to lease parties, start output retention; the requester's half if any."""
    settings = data_settings_from(config)
    dialer.p2p = p2p
    blobs = register_blob_protocol(p2p, chunks, lease_access(store), timeout=settings.io_timeout)
    retention = OutputRetention(chunks, store, settings.output_retention, active=active, clock=clock)
    await nursery.start(retention.run)
    requester = RequesterData(chunks, store, dialer, io_timeout=settings.io_timeout, clock=clock) \
        if with_requester else None
    images = RequesterImages(image_engine(config, executor), chunks) if with_requester else None
    return JobData(chunks=chunks, retention=retention, requester=requester, blobs=blobs, provider=provider,
                   images=images, provider_images=provider_images)


def image_engine(config: Config, executor: DockerExecutor | None) -> Callable[[], Awaitable[ImageEngine]]:
    """This node's dockerd for exporting images: the executor's, or (a requester) one connected when
    first needed (``[resources] docker_url``)."""
    connected: list[Engine] = []

    async def source() -> ImageEngine:
        if executor is not None:
            return executor.engine
        if not connected:
            connected.append(await Engine.connect(config.resources.docker_url or None))
        return connected[0]

    return source
