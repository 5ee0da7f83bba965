"""Discovery, adverts and the peer table across real P2PService nodes on loopback.

Every node is given only the seed's multiaddr; everything else is found through
the DHT, gossip and advert syncs.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest
import trio

from peerd.p2p.adverts import ADVERT_TOPIC
from peerd.p2p.dialing import connect
from peerd.p2p.errors import DialError
from protocol.codec import decode_as, encode
from protocol.messages import Advert, Envelope
from protocol.signing import Signer, open_envelope, seal_bytes
from tests.integration.harness_p2p import FAST_NET, Cluster, Node, p2p_cluster, provider_advert, raw_gossip_node

pytestmark = pytest.mark.integration


def holds(node: Node, peer_id: str) -> bool:
    return node.service.table.get(peer_id, Cluster.now()) is not None


def seq_of(node: Node, peer_id: str) -> int:
    entry = node.service.table.get(peer_id, Cluster.now())
    return entry.advert.seq if entry is not None else -1


async def test_seed_and_six_nodes_discover_each_other() -> None:
    async with p2p_cluster() as cluster:
        nodes = [await cluster.start_node() for _ in range(6)]
        await cluster.wait_until(cluster.all_know_each_other, timeout=30, what="every node holds every advert")
        ids = {n.peer_id for n in nodes}

        def connected_and_routed() -> bool:
            return all(
                ids - {n.peer_id} <= set(n.service.connected_peers())
                and ids - {n.peer_id} <= set(n.service.routing_peers())
                for n in nodes
            )

        # only the seed's address was configured: the rest came from the DHT
        await cluster.wait_until(connected_and_routed, timeout=30, what="nodes connected through the DHT")
        assert cluster.seed is not None
        assert ids <= cluster.seed.service.table.peer_ids(Cluster.now())
        for node in nodes:
            entry = node.service.table.get(nodes[0].peer_id, Cluster.now()) if node is not nodes[0] else None
            if entry is not None:
                assert entry.addrs == tuple(nodes[0].service.listen_addrs())
            assert node.service.counters["bad_signature"] == 0


async def test_the_dht_alone_connects_nodes_that_publish_no_adverts() -> None:
    # without adverts there are no addresses to learn from gossip or syncs: only
    # the seed's routing table (FIND_NODE) can tell a node where the others are
    async with p2p_cluster() as cluster:
        nodes = [await cluster.start_node(advertise=False) for _ in range(3)]
        ids = {n.peer_id for n in nodes}

        def meshed() -> bool:
            return all(ids - {n.peer_id} <= set(n.service.connected_peers()) for n in nodes)

        await cluster.wait_until(meshed, timeout=30, what="nodes find each other through the DHT")
        assert all(len(n.service.table) == 0 for n in nodes)
        assert all(ids - {n.peer_id} <= set(n.service.routing_peers()) for n in nodes[1:])


async def test_forged_replayed_and_misbound_adverts_are_rejected_and_counted() -> None:
    async with p2p_cluster() as cluster:
        target = await cluster.start_node()
        other = await cluster.start_node()
        await cluster.wait_until(cluster.all_know_each_other, timeout=20, what="two nodes converge")
        raw_key, stranger = Signer.generate(), Signer.generate()
        now = Cluster.now()

        def advert(signer: Signer, seq: int) -> bytes:
            ad = provider_advert(peer_id=signer.peer_id, seq=seq, issued_at=now, expires_at=now + 60)
            return seal_bytes(ad, signer)

        first, second, third = advert(raw_key, 1), advert(raw_key, 2), advert(raw_key, 3)
        env = decode_as(advert(raw_key, 10), Envelope)
        assert isinstance(env, Envelope)
        tampered = dataclasses.replace(env, payload=decode_as(advert(raw_key, 11), Envelope).payload)  # type: ignore[union-attr]
        forged = encode(tampered)
        misbound = advert(stranger, 1)  # valid, but signed by a key that is not the gossip sender

        async with raw_gossip_node(raw_key, target.service.listen_addrs()) as raw:
            for data in (first, second, forged, first, misbound):
                await raw.pubsub.publish(ADVERT_TOPIC, data)

            def counted() -> bool:
                c = target.service.counters
                return c["bad_signature"] >= 1 and c["replayed"] >= 1 and c["wrong_source"] >= 1

            await cluster.wait_until(counted, timeout=10, what="target counts the three bad adverts")
            await raw.pubsub.publish(ADVERT_TOPIC, third)
            # the valid ones were relayed on; none of the bad ones was stored anywhere
            await cluster.wait_until(lambda: seq_of(other, raw_key.peer_id) == 3, timeout=10,
                                     what="valid advert relayed to the other node")
        for node in cluster.nodes:
            assert not holds(node, stranger.peer_id)
        assert seq_of(target, raw_key.peer_id) == 3
        assert target.service.counters["accepted"] >= 3


async def test_stopped_node_advert_expires_from_every_table() -> None:
    net = dataclasses.replace(FAST_NET, advert_interval=1.0, advert_ttl=3.0)
    async with p2p_cluster(net) as cluster:
        nodes = [await cluster.start_node() for _ in range(3)]
        await cluster.wait_until(cluster.all_know_each_other, timeout=20, what="three nodes converge")
        gone = nodes[0]
        await gone.stop()
        rest = [n for n in cluster.nodes if n is not gone]

        def expired_everywhere() -> bool:
            return not any(gone.peer_id in n.service.table.peer_ids(Cluster.now()) for n in rest)

        took = await cluster.wait_until(expired_everywhere, timeout=10, what="the stopped node's advert expires")
        assert took <= net.advert_ttl + 2
        living = {n.peer_id for n in nodes[1:]}
        await cluster.wait_until(  # swept from memory too, not just hidden from queries
            lambda: all(len(n.service.table) == len(living - {n.peer_id}) for n in rest),
            timeout=3, what="expired entries are swept",
        )
        assert cluster.all_know_each_other()  # the living keep refreshing theirs


async def test_restarted_node_is_accepted_with_a_higher_seq() -> None:
    async with p2p_cluster() as cluster:
        watcher = await cluster.start_node()
        key = Signer.generate()
        first = await cluster.start_node(key)
        await cluster.wait_until(lambda: holds(watcher, key.peer_id), timeout=20, what="watcher sees the node")
        old_seq = seq_of(watcher, key.peer_id)
        await first.stop()
        second = await cluster.start_node(key)
        await cluster.wait_until(lambda: seq_of(watcher, key.peer_id) > old_seq, timeout=20,
                                 what="the restarted node's advert replaces the old one")
        entry = watcher.service.table.get(key.peer_id, Cluster.now())
        assert entry is not None and entry.addrs == tuple(second.service.listen_addrs())
        assert watcher.service.counters["replayed"] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nodes_wait_for_a_late_seed_and_keep_their_peers_when_it_goes() -> None:
    seed_key = Signer.generate()
    seed_listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    seed_addr = f"{seed_listen}/p2p/{seed_key.peer_id}"
    async with p2p_cluster(with_seed=False) as cluster:
        a = await cluster.start_node(bootstrap=[seed_addr])  # the seed is not up yet
        b = await cluster.start_node(bootstrap=[seed_addr])
        assert a.service.connected_peers() == [] and a.service.counters["seed_dials_failed"] == 1
        seed = await cluster.start_seed(seed_key, listen=seed_listen)
        assert seed.service.listen_addrs() == [seed_addr]
        await cluster.wait_until(cluster.all_know_each_other, timeout=20, what="nodes join once the seed is up")

        await seed.stop()
        await cluster.wait_until(lambda: seed_key.peer_id not in a.service.connected_peers(), timeout=5,
                                 what="the seed is gone")
        assert b.peer_id in a.service.connected_peers()
        assert a.source is not None
        a.source.update(free_cpus=1.5)
        a.service.advert_changed()

        def b_sees_change() -> bool:
            entry = b.service.table.get(a.peer_id, Cluster.now())
            return entry is not None and entry.advert.free_cpus == 1.5

        await cluster.wait_until(b_sees_change, timeout=10, what="gossip between peers without the seed")

        back = await cluster.start_seed(seed_key, listen=seed_listen)  # same key and port: same address
        assert back.service.listen_addrs() == [seed_addr]
        await cluster.wait_until(lambda: a.service.status()["seeds_connected"] == 1, timeout=15,
                                 what="the node re-dials the restarted seed")


async def test_advert_changes_are_paced_and_coalesced() -> None:
    async with p2p_cluster() as cluster:
        a = await cluster.start_node()
        b = await cluster.start_node()
        await cluster.wait_until(cluster.all_know_each_other, timeout=20, what="two nodes converge")
        assert a.source is not None
        published = a.service.counters["published"]
        start = trio.current_time()
        for i in range(10):
            a.source.update(queue_depth=i + 1)
            a.service.advert_changed()
            await trio.sleep(0)

        def b_sees_last() -> bool:
            entry = b.service.table.get(a.peer_id, Cluster.now())
            return entry is not None and entry.advert.queue_depth == 10

        await cluster.wait_until(b_sees_last, timeout=10, what="the last change arrives")
        assert trio.current_time() - start < 2.5
        assert a.service.counters["published"] - published <= 2

        # flush_advert returns once an advert built after the call is out
        a.source.update(draining=True)
        with trio.fail_after(5):
            assert await a.service.flush_advert()
        assert a.service.counters["published"] - published <= 3
        own = a.service.own_advert
        assert own is not None
        _, advert = open_envelope(own, expected_signer=a.peer_id)
        assert isinstance(advert, Advert) and advert.draining
        await cluster.wait_until(
            lambda: (e := b.service.table.get(a.peer_id, Cluster.now())) is not None and e.advert.draining,
            timeout=5, what="the flushed advert arrives",
        )
        assert cluster.seed is not None and not await cluster.seed.service.flush_advert()


async def test_dialling_a_peer_the_peerstore_never_saw_is_a_dial_error() -> None:
    # libp2p's peerstore raises PeerStoreError (a KeyError, not a BaseLibp2pError) for an unknown peer:
    # it must come out as DialError, or discovery's dial loop would die with it.
    async with p2p_cluster() as cluster:
        node = await cluster.start_node()
        libp2p_node = node.service._node
        assert libp2p_node is not None
        with pytest.raises(DialError):
            await connect(libp2p_node, Signer.generate().peer_id, [], timeout=2)
