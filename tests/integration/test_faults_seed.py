"""The seed is lost after the network formed: the network keeps working.

Every node runs in its own network namespace (tests/integration/netns.py).
The providers and the requester know only the first seed. It is then cut off
the network (its cable pulled: no RST, its connections just go silent). Jobs
still run, adverts keep flowing, and a new provider that knows only the second
seed joins and takes work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from peerd.devnet import wait_for
from tests.integration.cli import advert_times, submit
from tests.integration.netns import NetnsDevNet, netns_devnet

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture
def net() -> Iterator[NetnsDevNet]:
    with netns_devnet() as devnet:
        first = devnet.add_seed("seed-1")
        devnet.add("seed-2", "seed", bootstrap=[first.addr])
        for name in ("provider-1", "provider-2"):
            devnet.add(name, "provider", bootstrap=[first.addr])
        devnet.add("requester", "requester", bootstrap=[first.addr])
        devnet.wait_adverts("requester", ["provider-1", "provider-2"])
        yield devnet


def test_network_keeps_working_after_its_seed_is_cut_off(net: NetnsDevNet) -> None:
    requester = net.nodes["requester"]
    providers = {str(net.nodes[n].status()["peer_id"]) for n in ("provider-1", "provider-2")}
    net.network.cut("seed-1")
    cut_at = time.time()

    def refreshed_without_the_seed() -> bool:
        held = advert_times(requester)
        return all(held.get(p, 0.0) > cut_at for p in providers)

    wait_for("the requester to receive adverts issued after the seed was cut", refreshed_without_the_seed, 30)
    view = submit(requester, "echo still here", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "still here\n", view
    assert view["provider"] in providers

    # a newcomer that knows only the second seed joins, is found, and takes a job (it is cheapest)
    newcomer = net.add("provider-3", "provider", bootstrap=[net.nodes["seed-2"].addr], price=0.001)
    newcomer_id = str(newcomer.status()["peer_id"])
    net.wait_adverts("requester", ["provider-3"], timeout=30)
    view = submit(requester, "echo newcomer", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "newcomer\n", view
    assert view["provider"] == newcomer_id, view["attempts"]
    # and the newcomer learned of the old providers through seed-2 alone
    wait_for("the newcomer to hold the other providers' adverts",
             lambda: providers <= set(advert_times(newcomer)), 30)
