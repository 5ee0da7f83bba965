"""``/peerd/blob/1.0.0`` between real libp2p hosts in one process, real chunk stores on tmp dirs.

The input is a random multi-file directory imported for a task on the serving
node (``import_directory``); the fetching node asks for the manifest's
digests. A fault proxy in front of the server resets the connection mid-way;
a hand-written server corrupts every chunk it sends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.data.manifests import import_directory
from peerd.data.transfer import (
    BLOB_PROTOCOL,
    BlobService,
    FetchReport,
    TransferIncomplete,
    blob_opener,
    fetch,
    register_blob_protocol,
)
from peerd.p2p.dialing import to_id
from peerd.p2p.streams import Stream
from protocol.blobxfer import BLOB_MESSAGES, CHUNK_FRAME_OVERHEAD, SERVER_MAX_FRAME, Chunk, VerifiedChunk, Want
from protocol.codec import FrameDecoder, decode, encode, frame
from protocol.manifest import Manifest
from tests.integration.faultproxy import FaultProxy, listen_socket
from tests.integration.harness_p2p import FAST_NET, Cluster, Node, p2p_cluster

pytestmark = pytest.mark.integration

MIB = 1 << 20
CHUNK = 256 << 10
TASK = "task-blob-1"
FILES = {"a.bin": 9 * MIB + 12345, "dir/b.bin": 7 * MIB, "dir/sub/c.bin": 4 * MIB + 1, "small.txt": 999,
         "empty": 0, "dir/d.bin": 3 * MIB - 7}
TOTAL = sum(FILES.values())
NET = dataclasses.replace(FAST_NET, io_timeout=5.0, connect_timeout=5.0)


@dataclass
class Dataset:
    root: Path
    manifest: Manifest
    mid: bytes
    store_dir: Path  # a chunk store holding it, pinned for TASK (copy it per test)

    @property
    def digests(self) -> list[bytes]:
        return [self.mid, *self.manifest.digests()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    base = tmp_path_factory.mktemp("blobdata")
    root = base / "input"
    for rel, size in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    files = BlockingChunkStore.open(base / "store")
    try:
        mid, manifest = import_directory(root, files, TASK, chunk_size=CHUNK)
    finally:
        files.close()
    return Dataset(root, manifest, mid, base / "store")


async def copy_store(src: Path, dst: Path) -> ChunkStore:
    await trio.to_thread.run_sync(shutil.copytree, src, dst)
    return await ChunkStore.open(dst)


def parties(*allowed: tuple[str, str]) -> Callable[[str, str], Awaitable[bool]]:
    async def access(peer: str, task_id: str) -> bool:
        return (peer, task_id) in allowed

    return access


async def assert_holds(store: ChunkStore, data: Dataset) -> None:
    """The store holds every file of the input, byte for byte (chunks joined per manifest entry)."""
    assert await store.get(data.mid) is not None
    for entry in data.manifest.files:
        digest = hashlib.sha256()
        for d in entry.chunks:
            chunk = await store.get(d)
            assert chunk is not None, f"{entry.path}: chunk {d.hex()[:12]} missing"
            digest.update(chunk)
        assert digest.digest() == hashlib.sha256((data.root / entry.path).read_bytes()).digest(), entry.path


def assert_nothing_corrupt(root: Path) -> None:
    """Every chunk file on disk hashes to its name; no half-written file is left."""
    for shard in root.iterdir():
        if len(shard.name) == 2 and shard.is_dir():
            for path in shard.iterdir():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    assert not any((root / "tmp").iterdir())


@dataclass
class Pair:
    cluster: Cluster
    server: Node
    fetcher: Node
    served: ChunkStore
    mine: ChunkStore
    service: BlobService


@asynccontextmanager
async def pair(data: Dataset, tmp: Path, *, allow: bool = True) -> AsyncIterator[Pair]:
    async with p2p_cluster(NET, with_seed=False) as cluster:
        server = await cluster.start_node(bootstrap=[])
        fetcher = await cluster.start_node(bootstrap=[])
        served = await copy_store(data.store_dir, tmp / "served")
        mine = await ChunkStore.open(tmp / "mine")
        access = parties((fetcher.peer_id, TASK)) if allow else parties()
        service = register_blob_protocol(server.service, served, access, timeout=NET.io_timeout)
        try:
            yield Pair(cluster, server, fetcher, served, mine, service)
        finally:
            await served.close()
            await mine.close()


def opener(p: Pair, addrs: list[str] | None = None):  # type: ignore[no-untyped-def]
    return blob_opener(p.fetcher.service, {p.server.peer_id: addrs or p.server.service.listen_addrs()})


async def test_fetch_is_byte_equal_and_a_second_fetch_moves_nothing(dataset: Dataset, tmp_path: Path) -> None:
    async with pair(dataset, tmp_path) as p:
        report = await fetch(opener(p), [p.server.peer_id], TASK, dataset.digests, p.mine, streams=4)
        await assert_holds(p.mine, dataset)
        assert report.complete and report.present == 0 and report.fetched == len(set(dataset.digests))
        assert report.chunk_bytes >= TOTAL and report.bad_peers == {} and report.dropped == {}
        assert report.streams == 4 and report.retries == 0
        assert TOTAL <= report.wire_bytes <= 1.01 * TOTAL + (64 << 10)
        assert p.service.counters.chunks == report.fetched
        assert await p.mine.pinned(TASK) == set(dataset.digests)  # pinned for the task: gc keeps them

        again = await fetch(opener(p), [p.server.peer_id], TASK, dataset.digests, p.mine, streams=4)
        assert again.complete and again.present == again.wanted and again.fetched == 0
        assert again.wire_bytes == 0 and again.streams == 0


async def test_a_peer_that_is_no_party_of_the_lease_gets_nothing(dataset: Dataset, tmp_path: Path) -> None:
    async with pair(dataset, tmp_path, allow=False) as p:
        with pytest.raises(TransferIncomplete, match="not_authorized") as caught:
            await fetch(opener(p), [p.server.peer_id], TASK, dataset.digests, p.mine, streams=2)
        report = caught.value.report
        assert report.fetched == 0 and p.server.peer_id in report.dropped
        assert p.service.counters.refused >= 1 and p.service.counters.chunks == 0
        assert (await p.mine.usage()).chunks == 0


async def test_a_party_of_one_task_gets_no_chunk_of_another(dataset: Dataset, tmp_path: Path) -> None:
    async with pair(dataset, tmp_path) as p:
        p.service.access = parties((p.fetcher.peer_id, "other-task"))
        with pytest.raises(TransferIncomplete, match="no peer holds them") as caught:
            await fetch(opener(p), [p.server.peer_id], "other-task", dataset.digests[:5], p.mine)
        assert caught.value.report.fetched == 0 and p.service.counters.missing == 5
        assert p.service.counters.chunks == 0


class ResettingStore(ChunkStore):
    """A chunk store that resets every proxied connection once, after ``after`` chunks were stored."""

    def __init__(self, files: BlockingChunkStore, proxy: FaultProxy, after: int, forget: Callable[[], None]) -> None:
        super().__init__(files)
        self.proxy, self.after, self.forget, self.stored, self.resets = proxy, after, forget, 0, 0

    async def put_verified(self, chunk: VerifiedChunk) -> bool:
        stored = await super().put_verified(chunk)
        self.stored += 1
        if self.stored == self.after:
            self.forget()
            self.resets += self.proxy.reset_all()
        return stored


def forget_addrs(node: Node, peer_id: str) -> Callable[[], None]:
    """Drop what identify taught ``node`` about ``peer_id``'s addresses, so a re-dial uses the proxy again."""

    def forget() -> None:
        libp2p_node = node.service._node
        assert libp2p_node is not None
        libp2p_node.host.get_peerstore().clear_addrs(to_id(peer_id))

    return forget


async def test_a_reset_mid_transfer_resumes_with_only_what_is_missing(dataset: Dataset, tmp_path: Path) -> None:
    async with pair(dataset, tmp_path) as p, trio.open_nursery() as nursery:
        server_addr = p.server.service.listen_addrs()[-1]  # loopback
        port = int(server_addr.split("/tcp/")[1].split("/")[0])
        proxy = FaultProxy(listen_socket(("127.0.0.1", 0)), target=("127.0.0.1", port))
        await nursery.start(proxy.run)
        via_proxy = f"/ip4/127.0.0.1/tcp/{proxy.address[1]}/p2p/{p.server.peer_id}"
        await p.mine.close()
        mine = ResettingStore(await trio.to_thread.run_sync(BlockingChunkStore.open, tmp_path / "mine2"),
                              proxy, len(dataset.digests) // 2, forget_addrs(p.fetcher, p.server.peer_id))
        try:
            report = await fetch(opener(p, [via_proxy]), [p.server.peer_id], TASK, dataset.digests, mine,
                                 streams=4, window=4)
            await assert_holds(mine, dataset)
        finally:
            await mine.close()
        nursery.cancel_scope.cancel()
    assert mine.resets >= 1 and proxy.counters["reset"] >= 1, proxy.counters
    # it opened streams again after the reset (on a new connection: through the proxy, or, when identify on the
    # reset connection re-taught the server's own address after ``forget`` under load, directly)
    assert report.complete and report.retries >= 1 and report.streams > 4, report
    # no more than 1.2x the input moved in all: counted by the fetcher and, on the wire, by the proxy
    assert report.wire_bytes <= 1.2 * TOTAL, report
    assert proxy.counters["bytes"] <= 1.2 * TOTAL, proxy.counters
    assert_nothing_corrupt(tmp_path / "mine2")


def corrupting_server(store: ChunkStore) -> Callable[[Stream], Awaitable[None]]:
    """A bad actor: answers every want with chunks whose first byte is flipped (framed by hand)."""

    async def handler(stream: Stream) -> None:
        frames = FrameDecoder(SERVER_MAX_FRAME)
        while data := await stream.read():
            frames.receive_data(data)
            while (payload := frames.next_frame()) is not None:
                msg = decode(payload, BLOB_MESSAGES)
                if isinstance(msg, Want):
                    for d in msg.digests:
                        good = await store.get(d)
                        assert good is not None
                        bad = bytes([good[0] ^ 0xFF]) + good[1:]
                        await stream.write(frame(encode(Chunk(digest=d, data=bad)), CHUNK + CHUNK_FRAME_OVERHEAD))

    return handler


async def test_a_peer_serving_corrupt_chunks_is_dropped_and_the_data_comes_from_an_honest_one(
    dataset: Dataset, tmp_path: Path,
) -> None:
    async with pair(dataset, tmp_path) as p:
        evil = await p.cluster.start_node(bootstrap=[])
        evil_store = await copy_store(dataset.store_dir, tmp_path / "evil")
        evil.service.set_stream_handler(BLOB_PROTOCOL, corrupting_server(evil_store))
        addrs = {p.server.peer_id: p.server.service.listen_addrs(), evil.peer_id: evil.service.listen_addrs()}
        try:
            report = await fetch(blob_opener(p.fetcher.service, addrs), [evil.peer_id, p.server.peer_id], TASK,
                                 dataset.digests, p.mine, streams=4)
        finally:
            await evil_store.close()
        await assert_holds(p.mine, dataset)
        assert list(report.bad_peers) == [evil.peer_id]
        assert "does not match its digest" in report.bad_peers[evil.peer_id]
        assert p.server.peer_id not in report.bad_peers and report.complete
        assert_nothing_corrupt(tmp_path / "mine")


async def test_only_a_corrupt_peer_fails_the_fetch_with_a_clear_reason_and_stores_nothing(
    dataset: Dataset, tmp_path: Path,
) -> None:
    async with p2p_cluster(NET, with_seed=False) as cluster:
        evil = await cluster.start_node(bootstrap=[])
        fetcher = await cluster.start_node(bootstrap=[])
        evil_store = await copy_store(dataset.store_dir, tmp_path / "evil")
        evil.service.set_stream_handler(BLOB_PROTOCOL, corrupting_server(evil_store))
        mine = await ChunkStore.open(tmp_path / "mine")
        try:
            with pytest.raises(TransferIncomplete, match="does not match its digest") as caught:
                await fetch(blob_opener(fetcher.service, {evil.peer_id: evil.service.listen_addrs()}),
                            [evil.peer_id], TASK, dataset.digests, mine, streams=2)
            report: FetchReport = caught.value.report
            assert report.fetched == 0 and len(report.missing) == len(set(dataset.digests))
            assert (await mine.usage()).chunks == 0
        finally:
            await mine.close()
            await evil_store.close()
    assert_nothing_corrupt(tmp_path / "mine")
