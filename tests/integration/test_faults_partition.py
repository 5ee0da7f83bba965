"""A partition between requester and provider during a job, then healed.

Every node runs in its own network namespace. While a job runs, the network
splits in two: {requester, the other provider} | {seed, the job's provider}
(iptables DROP both ways: packets vanish, nobody gets a RST). The requester's
timeouts fire, it records the provider as lost and places the job on the
provider it can still reach; the cut-off provider finishes the job on its own
and frees its capacity. Once healed, every node holds fresh adverts of every
provider again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from peerd.devnet import wait_for
from tests.integration.cli import advert_times, cli_json, start_nodes, submit, wait_final, wait_leased
from tests.integration.netns import NetnsDevNet, netns_devnet

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PROVIDERS = ("provider-1", "provider-2")


@pytest.fixture
def net() -> Iterator[NetnsDevNet]:
    with netns_devnet() as devnet:
        yield start_nodes(devnet, PROVIDERS)


def test_partition_mid_job_settles_both_sides_and_adverts_converge_after_healing(net: NetnsDevNet) -> None:
    requester = net.nodes["requester"]
    ids = {name: str(net.nodes[name].status()["peer_id"]) for name in PROVIDERS}
    task_id = str(submit(requester, "sleep 8; echo done", wait=False)["task_id"])
    first_id = wait_leased(requester, task_id)
    first = next(name for name, pid in ids.items() if pid == first_id)
    other = next(name for name in PROVIDERS if name != first)

    net.network.partition(["requester", other], ["seed", first])

    # requester: the lost provider is recorded and the job completes on the other one
    view = wait_final(requester, task_id, 60)
    assert view["state"] == "succeeded", (view["state"], view["detail"], view["attempts"])
    assert view["provider"] == ids[other] and view["stdout"] == "done\n"
    outcomes = [(a["provider"], a["outcome"]) for a in view["attempts"]]  # type: ignore[union-attr]
    assert (first_id, "lost") in outcomes, outcomes

    # provider cut off mid-job: it ran the job to its end and freed its capacity
    cut_off = net.nodes[first]
    wait_for(f"{first} to free its capacity", lambda: cut_off.status()["tasks_running"] == 0, 30)
    theirs = cli_json(cut_off, "tasks")
    assert isinstance(theirs, list)
    mine = [t for t in theirs if t["task_id"] == task_id]
    assert mine and mine[0]["state"] == "succeeded", mine

    net.network.heal()
    healed_at = time.time()

    def converged() -> bool:
        for observer in ("seed", "requester", *PROVIDERS):
            held = advert_times(net.nodes[observer])
            wanted = [pid for name, pid in ids.items() if name != observer]
            if not all(held.get(pid, 0.0) > healed_at for pid in wanted):
                return False
        return True

    wait_for("every node to hold fresh adverts of every provider after healing", converged, 40)
    # and the healed provider takes work from the requester again
    view = submit(requester, "echo healed", wait=True)
    assert view["state"] == "succeeded", view
