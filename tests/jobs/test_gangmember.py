"""A gang member's environment contract and overlay, from its signed lease terms; endpoint ports."""

from __future__ import annotations

import base64
import dataclasses
import socket

import pytest

from peerd.jobs.gangmember import (
    MASTER_PORT,
    OVERLAY_INTERFACE,
    EndpointPorts,
    NoFreePort,
    gang_env,
    overlay_spec,
)
from protocol.messages import GangRef, JobSpec, LeaseTerms, RosterMember

KEYS = [base64.b64encode(bytes([i + 1]) * 32).decode() for i in range(3)]


def terms(rank: int, *, gpus: int = 0, size: int = 3) -> LeaseTerms:
    roster = tuple(
        RosterMember(rank=i, peer=f"peer-{i}", public_key=KEYS[i], endpoint=f"192.0.2.{i + 1}:5182{i}")
        for i in range(size)
    )
    spec = JobSpec(image="busybox", command=("env",), nodes=size, gpus=gpus)
    return LeaseTerms(
        task_id="g-r1", requester="req", provider=f"peer-{rank}", spec=spec, price=1.0,
        gpus=tuple(f"GPU-{i}" for i in range(gpus)), issued_at=1.0, expires_at=2.0,
        gang=GangRef(gang_id="g", size=size, rank=rank), roster=roster,
    )


def test_the_env_contract_of_torchrun_and_skypilot() -> None:
    env = gang_env(terms(1))
    assert env == {
        "MASTER_ADDR": "10.99.0.1", "MASTER_PORT": str(MASTER_PORT), "RANK": "1", "WORLD_SIZE": "3",
        "LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": OVERLAY_INTERFACE, "NCCL_SOCKET_IFNAME": OVERLAY_INTERFACE,
        "PEERD_NODE_IPS": "10.99.0.1,10.99.0.2,10.99.0.3", "PEERD_NODE_RANK": "1", "PEERD_NUM_NODES": "3",
        "PEERD_GANG_ID": "g",
    }
    assert not any(k.startswith("NCCL_IB") for k in env)


def test_gpu_ranks_get_nccl_over_the_overlay() -> None:
    env = gang_env(terms(0, gpus=1))
    assert env["NCCL_IB_DISABLE"] == "1" and env["NCCL_SOCKET_IFNAME"] == OVERLAY_INTERFACE
    assert env["RANK"] == "0"


def test_the_overlay_is_this_rank_and_every_other_member_as_a_peer() -> None:
    spec = overlay_spec(terms(2), private_key=KEYS[0], listen_port=51822)
    assert spec.address == "10.99.0.3/24" and spec.interface == OVERLAY_INTERFACE and spec.listen_port == 51822
    assert [(p.public_key, p.endpoint, p.address) for p in spec.peers] == [
        (KEYS[0], "192.0.2.1:51820", "10.99.0.1"), (KEYS[1], "192.0.2.2:51821", "10.99.0.2"),
    ]
    assert KEYS[0] not in repr(spec)  # the private key is never shown


def test_a_plain_lease_has_no_gang_contract() -> None:
    plain = dataclasses.replace(terms(0), spec=JobSpec(image="busybox", command=()), gang=None, roster=())
    with pytest.raises(ValueError):
        gang_env(plain)


def test_ports_come_from_the_range_and_are_held_while_live() -> None:
    live: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    ports = EndpointPorts("127.0.0.1", base, base + 1, live=lambda: live, bind_host="127.0.0.1")
    live.update({"a", "b"})
    first, second = ports.take("a"), ports.take("b")
    assert {first, second} == {base, base + 1}
    with pytest.raises(NoFreePort):
        ports.take("c")
    live.discard("a")  # a's offer lapsed or its job ended: its port is free again
    assert ports.take("c") == first
    assert ports.endpoint(first) == f"127.0.0.1:{first}"


def test_a_port_in_use_on_the_host_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        ports = EndpointPorts("127.0.0.1", port, port, live=lambda: {"x"}, bind_host="127.0.0.1")
        with pytest.raises(NoFreePort):
            ports.take("x")


def test_port_zero_lets_the_kernel_pick() -> None:
    ports = EndpointPorts("::1", live=lambda: {"a"}, bind_host="::1")
    port = ports.take("a")
    assert 0 < port < 65536 and ports.endpoint(port) == f"[::1]:{port}"
