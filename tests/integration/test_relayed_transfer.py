"""Job data and relays, in one process on 127.0.0.1: real nodes, a real relay (the seed), real chunk stores.

The fetching node reaches the serving node only through the seed's relay (a
circuit address; the serving node holds a reservation there). By default the
blob opener does not send job data over that connection: it asks for a
direct one (``P2PService.try_direct``: the library's DCUtR, whose first step
dials the peer's direct addresses, which on loopback works) and fetches over
it. With ``[relay] allow_data`` it fetches over the relay as it is. Where no
direct path can be had (behind two NATs) is tests/integration/test_nat.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from peerd.data.blobstore import ChunkStore
from peerd.data.transfer import OpenStream, blob_opener, fetch, register_blob_protocol
from peerd.jobs.taskwire import ByteStream
from peerd.p2p.relay import reserve
from tests.integration.harness_p2p import Node, p2p_cluster
from tests.integration.test_blob_transfer import NET, TASK, Dataset, assert_holds, copy_store, dataset, parties

pytestmark = pytest.mark.integration

__all__ = ["dataset"]  # the fixture, shared with test_blob_transfer


@dataclass
class Relayed:
    server: Node
    fetcher: Node
    circuit: str  # the server's address through the seed's relay
    mine: ChunkStore


@asynccontextmanager
async def relayed_pair(data: Dataset, tmp: Path) -> AsyncIterator[Relayed]:
    """A server reserved on the seed's relay, and a fetcher that knows it only by its circuit address."""
    async with p2p_cluster(NET) as cluster:
        assert cluster.seed is not None and cluster.seed.service.serves_relay
        server = await cluster.start_node()  # joined through the seed: connected to it
        fetcher = await cluster.start_node(bootstrap=[])  # connected to nobody
        await reserve(server.service._require().host, cluster.seed.peer_id, timeout=NET.connect_timeout)
        served = await copy_store(data.store_dir, tmp / "served")
        mine = await ChunkStore.open(tmp / "mine")
        register_blob_protocol(server.service, served, parties((fetcher.peer_id, TASK)), timeout=NET.io_timeout)
        seed_addr = next(a for a in cluster.seed_addrs if "/ip4/127." in a)
        try:
            yield Relayed(server, fetcher, f"{seed_addr}/p2p-circuit/p2p/{server.peer_id}", mine)
        finally:
            await served.close()
            await mine.close()


def recording(opener: OpenStream, paths: list[bool]) -> OpenStream:
    """``opener``, noting for every stream it hands out whether it runs through a relay."""

    async def open_stream(peer: str) -> ByteStream:
        stream = await opener(peer)
        paths.append(stream.relayed)  # type: ignore[attr-defined]  # a p2p Stream
        return stream

    return open_stream


async def test_job_data_moves_directly_after_the_relayed_dial(dataset: Dataset, tmp_path: Path) -> None:
    async with relayed_pair(dataset, tmp_path) as r:
        paths: list[bool] = []
        opener = recording(blob_opener(r.fetcher.service, {r.server.peer_id: [r.circuit]}), paths)
        report = await fetch(opener, [r.server.peer_id], TASK, dataset.digests, r.mine, streams=4)
        await assert_holds(r.mine, dataset)
        assert report.complete and report.dropped == {}
        assert paths and not any(paths), paths  # every blob stream went over the direct connection
        counters = r.fetcher.service.counters
        assert counters["direct_upgrades"] == 1 and counters["direct_upgrade_failures"] == 0
        assert r.fetcher.service.has_direct(r.server.peer_id)
        print(f"path taken: direct ({len(paths)} streams) after the first dial went through the relay")


async def test_with_allow_data_job_data_goes_through_the_relay(dataset: Dataset, tmp_path: Path) -> None:
    async with relayed_pair(dataset, tmp_path) as r:
        r.fetcher.service.relay = dataclasses.replace(r.fetcher.service.relay, allow_data=True)
        paths: list[bool] = []
        opener = recording(blob_opener(r.fetcher.service, {r.server.peer_id: [r.circuit]}), paths)
        report = await fetch(opener, [r.server.peer_id], TASK, dataset.digests, r.mine, streams=4)
        await assert_holds(r.mine, dataset)
        assert report.complete and paths and all(paths), paths
        assert r.fetcher.service.is_relayed(r.server.peer_id)
        assert r.fetcher.service.counters["direct_upgrades"] == 0
