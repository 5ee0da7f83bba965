"""Advert seq numbers, the gossip validator's edge, and the bounds of a direct sync."""

from __future__ import annotations

import itertools
import struct
import time
from typing import ClassVar

import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.pubsub.pb import rpc_pb2

from peerd.config import NetworkConfig
from peerd.market.peertable import PeerEntry, PeerTable
from peerd.p2p.adverts import AdvertPublisher, gossip_validator, next_seq
from peerd.p2p.host import open_node
from peerd.p2p.streams import Stream, guard_handler
from peerd.p2p.sync import SYNC_LIMIT, SYNC_PROTOCOL
from protocol.codec import frame
from protocol.errors import LocalProtocolError
from protocol.messages import Advert
from protocol.signing import Signer
from tests.integration.harness_p2p import LOOPBACK, Cluster, p2p_cluster


def test_seq_follows_the_clock_so_a_restart_continues_above_the_last_run() -> None:
    assert next_seq(0, 1000.0) == 100_000
    assert next_seq(100_000, 1000.0) == 100_001  # two adverts in the same centisecond
    # a previous run that published once a second for an hour never got ahead of the clock
    last = 0
    for t in range(3600):
        last = next_seq(last, 1000.0 + t)
    assert next_seq(0, 1000.0 + 3600.5) > last


def test_validator_turns_any_failure_into_a_rejection() -> None:
    table = PeerTable("SELF")
    validate = gossip_validator(table, lambda: 1000.0, None)
    bad = rpc_pb2.Message(data=b"\x00", from_id=b"\xff\xfe not a peer id", seqno=b"1", topicIDs=["t"])
    assert validate(Signer.generate().peer_id, bad) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "malformed"),
    [
        (b"".join(frame(b"x") for _ in range(SYNC_LIMIT + 50)), SYNC_LIMIT),  # too many adverts
        (struct.pack(">I", 1 << 20) + b"y" * 100, 0),  # one frame far over the advert size limit
    ],
)
async def test_a_flooding_sync_answer_is_cut_short(answer: bytes, malformed: int) -> None:
    async def flood(stream: Stream) -> None:
        await stream.write(answer)

    async with open_node(Signer.generate(), [LOOPBACK], topics=frozenset()) as bad:
        bad.host.set_stream_handler(TProtocol(SYNC_PROTOCOL), guard_handler(flood, io_timeout=5))
        async with p2p_cluster(with_seed=False) as cluster:
            node = await cluster.start_node(bootstrap=[f"{bad.host.get_addrs()[0]}"])
            await cluster.wait_until(lambda: node.service.counters["sync_failed"] >= 1, timeout=10,
                                     what="the sync is abandoned")
            counters = node.service.counters  # one snapshot: a retry may follow each failure
            assert counters["malformed"] == malformed * counters["sync_failed"]
            assert counters["sync_fetched"] == 0


async def test_a_failing_on_advert_hook_neither_stops_the_node_nor_the_relay() -> None:
    def broken(entry: PeerEntry) -> None:
        raise RuntimeError("hook bug")

    async with p2p_cluster() as cluster:
        await cluster.start_node()
        # b's hook fails on every advert, from syncs and from gossip alike
        b = await cluster.start_node(on_advert=broken)
        await cluster.start_node(bootstrap=b.service.listen_addrs())
        await cluster.wait_until(cluster.all_know_each_other, timeout=20, what="convergence despite the hook")
        assert b.service.running



async def test_wait_advert_returns_once_the_table_accepts_an_advert() -> None:
    async with p2p_cluster() as cluster, trio.open_nursery() as nursery:
        a = await cluster.start_node()
        woke: list[set[str]] = []
        woken = trio.Event()

        async def waiter() -> None:
            await a.service.wait_advert()
            woke.append(a.service.table.peer_ids(Cluster.now()))  # what the table held when it woke
            woken.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()  # nobody else is advertising yet
        b = await cluster.start_node()
        with trio.fail_after(20):
            await woken.wait()
        assert woke == [{b.peer_id}]

class _Unpublished:
    """Stands in for the libp2p node: a publisher whose advert cannot be built never reaches it."""

    class gossipsub:  # mirrors the attribute the publisher reads
        mesh: ClassVar[dict[str, object]] = {}


async def test_a_publisher_whose_advert_cannot_be_built_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tries: list[float] = []

    def broken_source(now: float) -> Advert:
        tries.append(trio.current_time())
        if len(tries) > 100:  # a spinning loop would never let the clock move: stop it here
            raise RuntimeError("the publisher spins")
        raise LocalProtocolError("Advert.price_cpu_hour must be in [0, 1e12], got nan")

    net = NetworkConfig(advert_interval=60.0, advert_ttl=300.0)
    publisher = AdvertPublisher(_Unpublished(), Signer.generate(), net, broken_source,  # type: ignore[arg-type]
                                list, time.time)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        for _ in range(1200):
            publisher.changed()  # changes keep asking for a re-publish: the back-off still holds
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert publisher.counters["publish_failed"] == len(tries) and publisher.counters["published"] == 0
    assert gaps[:5] == pytest.approx([2.0, 4.0, 8.0, 16.0, 32.0], abs=0.01)
    assert gaps[5:] == pytest.approx([net.advert_interval] * len(gaps[5:]), abs=0.51)
    assert len(tries) <= 6 + 600 / net.advert_interval
