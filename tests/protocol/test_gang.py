"""Gang jobs on the wire: the gang in the request, the overlay side in the offer, the roster in the
accept and the lease terms; a one-node job's bytes stay as they were."""

from __future__ import annotations

import base64
import dataclasses

import msgpack
import pytest

from protocol import codec, signing
from protocol.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from protocol.gang import is_wireguard_key, split_endpoint
from protocol.messages import Accept, GangRef, JobSpec, LeaseTerms, OverlayEndpoint, RosterMember, TaskRequest
from protocol.negotiation import State, TaskRole

from .helpers import NOW, TASK_ID, MachinePair, other_signer, sample_offer, sample_spec

R, P = TaskRole.REQUESTER, TaskRole.PROVIDER
KEYS = tuple(base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2, 3))


def gang_spec() -> JobSpec:
    return dataclasses.replace(sample_spec(), nodes=2)


def overlay(i: int) -> OverlayEndpoint:
    return OverlayEndpoint(public_key=KEYS[i], endpoint=f"127.0.0.1:{51820 + i}")


def roster(pair: MachinePair, rank: int = 1) -> tuple[RosterMember, ...]:
    """A 2-rank roster with the pair's provider at ``rank``."""
    other = other_signer().peer_id
    peers = {rank: pair.provider_signer.peer_id, 1 - rank: other}
    return tuple(
        RosterMember(rank=i, peer=peers[i], public_key=(overlay(i) if i == rank else overlay(2)).public_key,
                     endpoint=(overlay(i) if i == rank else overlay(2)).endpoint)
        for i in range(2)
    )


def offered(rank: int = 1) -> MachinePair:
    pair = MachinePair()
    gang = GangRef(gang_id="g1", size=2, rank=rank)
    pair.send(R, pair.requester.send_request(TASK_ID, gang_spec(), now=NOW, gang=gang))
    pair.send(P, pair.provider.send_offer(price=2.5, gpus=("GPU-1",), expires_at=NOW + 30, overlay=overlay(rank)))
    return pair


def test_a_one_node_job_is_byte_identical() -> None:
    spec = sample_spec()
    assert spec.nodes == 1 and "nodes" not in spec.to_wire()
    request = TaskRequest(task_id="t", requester="p", spec=spec, sent_at=NOW)
    assert "gang" not in request.to_wire()
    assert set(sample_offer().to_wire()) == {"v", "t", "task_id", "price", "expires_at", "cpus", "memory", "gpus"}
    assert set(Accept(task_id="t", price=1.0).to_wire()) == {"v", "t", "task_id", "price"}


def test_a_default_written_out_or_a_stray_key_is_refused() -> None:
    wire = sample_spec().to_wire()
    with pytest.raises(DecodeError, match="default"):
        JobSpec.from_wire({**wire, "nodes": 1})
    with pytest.raises(DecodeError, match="unexpected"):
        JobSpec.from_wire({**wire, "nodez": 2})
    assert JobSpec.from_wire({**wire, "nodes": 3}).nodes == 3
    accept = Accept(task_id="t", price=1.0).to_wire()
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb({**accept, "roster": []}, use_bin_type=True))


def test_request_names_its_gang_exactly_for_a_gang_job() -> None:
    with pytest.raises(LocalProtocolError, match="gang"):
        TaskRequest(task_id="t", requester="p", spec=gang_spec(), sent_at=NOW)
    with pytest.raises(LocalProtocolError, match="ranks"):
        TaskRequest(task_id="t", requester="p", spec=gang_spec(), sent_at=NOW,
                    gang=GangRef(gang_id="g", size=3, rank=0))
    with pytest.raises(LocalProtocolError, match="rank"):
        GangRef(gang_id="g", size=2, rank=2)


def test_overlay_fields_are_checked() -> None:
    assert is_wireguard_key(KEYS[0]) and not is_wireguard_key("A" * 43 + "B") and not is_wireguard_key("x")
    assert split_endpoint("10.0.0.1:51820") == ("10.0.0.1", 51820)
    assert split_endpoint("[::1]:9") == ("::1", 9)
    for bad in ("10.0.0.1", "10.0.0.1:0", "::1:80", ":80", "h:070", "h:65536", "a b:1"):
        assert split_endpoint(bad) is None, bad
    with pytest.raises(LocalProtocolError, match="endpoint"):
        OverlayEndpoint(public_key=KEYS[0], endpoint="nowhere")


def test_gang_member_negotiation_binds_the_gang_and_roster() -> None:
    pair = offered(rank=1)
    members = roster(pair, rank=1)
    pair.send(R, pair.requester.accept(now=NOW, roster=members))
    terms = pair.provider.draft_lease(issued_at=NOW + 1, expires_at=NOW + 3600)
    assert terms.gang == GangRef(gang_id="g1", size=2, rank=1) and terms.roster == members
    pair.send(P, pair.provider.propose_lease(terms))
    pair.send(R, pair.requester.countersign_lease())
    assert pair.states() == (State.LEASED, State.LEASED)
    assert pair.provider.lease is not None
    signed = signing.verify_cosigned(pair.provider.lease, LeaseTerms)
    assert [m.peer for m in signed.roster] == [other_signer().peer_id, pair.provider_signer.peer_id]


def test_a_gang_offer_needs_the_overlay_and_a_plain_one_must_not_carry_it() -> None:
    pair = MachinePair()
    pair.send(R, pair.requester.send_request(TASK_ID, gang_spec(), now=NOW, gang=GangRef(gang_id="g", size=2,
                                                                                           rank=0)))
    with pytest.raises(RemoteProtocolError, match="overlay"):
        pair.send(P, pair.raw(P, sample_offer()))
    plain = MachinePair()
    plain.request()
    with pytest.raises(LocalProtocolError, match="overlay"):
        plain.provider.send_offer(price=2.5, gpus=("GPU-1",), expires_at=NOW + 30, overlay=overlay(0))


@pytest.mark.parametrize("breakage", ["missing", "wrong_peer", "wrong_key", "wrong_size"])
def test_the_roster_must_name_this_provider_as_offered(breakage: str) -> None:
    pair = offered(rank=1)
    members = list(roster(pair, rank=1))
    if breakage == "missing":
        bad: tuple[RosterMember, ...] = ()
    elif breakage == "wrong_peer":
        members[1] = dataclasses.replace(members[1], peer="someone-else")
        bad = tuple(members)
    elif breakage == "wrong_key":
        members[1] = dataclasses.replace(members[1], public_key=KEYS[2], endpoint="127.0.0.1:1")
        members[0] = dataclasses.replace(members[0], public_key=KEYS[0])
        bad = tuple(members)
    else:
        bad = (*members, RosterMember(rank=2, peer="third", public_key=KEYS[0], endpoint="h:1"))
    with pytest.raises(LocalProtocolError):
        pair.requester.accept(now=NOW, roster=bad)
    accept = Accept(task_id=TASK_ID, price=2.5, roster=bad)
    with pytest.raises(RemoteProtocolError):
        pair.send(R, pair.raw(R, accept))
    assert pair.provider.state is State.ERROR


def test_a_roster_is_ranks_in_order_with_distinct_peers_and_keys() -> None:
    a = RosterMember(rank=0, peer="a", public_key=KEYS[0], endpoint="h:1")
    b = RosterMember(rank=1, peer="b", public_key=KEYS[1], endpoint="h:2")
    Accept(task_id="t", price=1.0, roster=(a, b))
    for bad in ((b, a), (a,), (a, dataclasses.replace(b, peer="a")), (a, dataclasses.replace(b, public_key=KEYS[0]))):
        with pytest.raises(LocalProtocolError, match="roster"):
            Accept(task_id="t", price=1.0, roster=bad)


def test_lease_terms_with_another_roster_are_refused() -> None:
    pair = offered(rank=0)
    members = roster(pair, rank=0)
    pair.send(R, pair.requester.accept(now=NOW, roster=members))
    terms = pair.provider.draft_lease(issued_at=NOW + 1, expires_at=NOW + 3600)
    other = dataclasses.replace(terms, roster=(members[0], dataclasses.replace(members[1], endpoint="h:9")))
    with pytest.raises(LocalProtocolError, match="roster"):
        pair.provider.propose_lease(other)
    # a one-node cancel in LEASE_PROPOSED (what a gang does when another member refused) stays legal
    pair.send(P, pair.provider.propose_lease(terms))
    pair.send(R, pair.requester.cancel("gang member 1 refused: no_capacity"))
    assert pair.states() == (State.CANCELLED, State.CANCELLED)
