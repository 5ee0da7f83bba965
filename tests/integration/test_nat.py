"""Providers and requesters behind home routers (NAT), with the seeds relaying.

Real ``peerd run`` processes in network namespaces (tests/integration/netns.py):
the seeds and the public nodes sit on the bridge, each home router MASQUERADEs
its LAN. Nobody can dial a node behind a router; it learns that with the
dial-back check, takes reservations on two relays (the seeds) and advertises
its circuit addresses, and jobs reach it through a relay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from peerd.devnet import wait_for
from tests.integration.netns import NetnsDevNet, cli_json, netns_devnet, submit

pytestmark = [pytest.mark.integration, pytest.mark.docker]

MOVE_WITHIN = 15.0  # seconds for a node to move to another relay once its relay is gone


def counters(devnet: NetnsDevNet, name: str) -> dict[str, int]:
    view = cli_json(devnet.nodes[name], "status")
    assert isinstance(view, dict) and isinstance(view["counters"], dict)
    return view["counters"]


def advertised(devnet: NetnsDevNet, observer: str, name: str) -> list[str]:
    """The addresses in ``name``'s advert as ``observer`` holds it ([] while it holds none)."""
    wanted = devnet.nodes[name].status()["peer_id"]
    peers = cli_json(devnet.nodes[observer], "peers")
    assert isinstance(peers, list)
    return next((list(p["addrs"]) for p in peers if p["peer_id"] == wanted), [])


def relays_in(addrs: list[str]) -> set[str]:
    """The relays' peer IDs in circuit addresses."""
    return {a.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[1] for a in addrs if "/p2p-circuit/" in a}


def wait_relayed(devnet: NetnsDevNet, name: str, observer: str, timeout: float = 40) -> set[str]:
    """Wait until ``observer`` holds ``name``'s advert with circuit addresses only, through 2 relays."""
    def probe() -> set[str] | None:
        addrs = advertised(devnet, observer, name)
        relays = relays_in(addrs)
        held = counters(devnet, name)
        ok = addrs and len(relays) >= 2 and all("/p2p-circuit/" in a for a in addrs)
        return relays if ok and held["relays_held"] >= 2 and held["reachable"] == 0 else None

    return wait_for(f"{observer} to see {name} as relayed", probe, timeout)


@pytest.fixture
def net() -> Iterator[NetnsDevNet]:
    with netns_devnet() as devnet:
        first = devnet.add_seed("seed-1")
        devnet.add("seed-2", "seed", bootstrap=[first.addr])
        devnet.network.add_router("home")
        devnet.network.add_router("office")
        yield devnet


def test_provider_behind_nat_is_relayed_and_runs_a_public_requesters_job(net: NetnsDevNet) -> None:
    seeds = [net.nodes["seed-1"].addr, net.nodes["seed-2"].addr]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("public-provider", "provider", bootstrap=seeds, price=0.05)
    net.add("requester", "requester", bootstrap=seeds)
    wait_relayed(net, "home-provider", "requester")
    wait_for("the public provider to know it is public", lambda: counters(net, "public-provider")["reachable"], 30)
    assert counters(net, "public-provider")["relays_held"] == 0
    public_addrs = advertised(net, "requester", "public-provider")
    assert public_addrs and not relays_in(public_addrs)
    net.stop("public-provider")  # so the job has to go to the relayed provider
    view = submit(net.nodes["requester"], "echo through the relay", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "through the relay\n", view
    assert view["provider"] == net.nodes["home-provider"].status()["peer_id"]


def test_both_behind_different_nats_the_job_completes(net: NetnsDevNet) -> None:
    seeds = [net.nodes["seed-1"].addr, net.nodes["seed-2"].addr]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("office-requester", "requester", bootstrap=seeds, behind="office")
    wait_relayed(net, "home-provider", "office-requester")
    view = submit(net.nodes["office-requester"], "echo nat to nat", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "nat to nat\n", view


def test_provider_moves_to_another_relay_when_its_relay_dies(net: NetnsDevNet) -> None:
    net.add("seed-3", "seed", bootstrap=[net.nodes["seed-1"].addr])
    seeds = [net.nodes[s].addr for s in ("seed-1", "seed-2", "seed-3")]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("requester", "requester", bootstrap=seeds)
    used = wait_relayed(net, "home-provider", "requester")
    victim = next(n for n in ("seed-1", "seed-2", "seed-3") if net.nodes[n].status()["peer_id"] in used)
    victim_id = str(net.nodes[victim].status()["peer_id"])
    net.stop(victim)
    killed = time.monotonic()

    def moved() -> bool:
        relays = relays_in(advertised(net, "requester", "home-provider"))
        return len(relays) >= 2 and victim_id not in relays

    wait_for("the provider's advert to name two live relays again", moved, MOVE_WITHIN)
    print(f"moved to another relay {time.monotonic() - killed:.1f}s after the relay was stopped")
    view = submit(net.nodes["requester"], "echo after the move", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "after the move\n", view
