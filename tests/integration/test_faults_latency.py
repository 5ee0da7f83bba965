"""A slow, unreliable link: every connection of the requester runs through a fault proxy.

Every node runs in its own network namespace. In the requester's namespace,
NAT sends all its TCP connections (to the seed and the providers, both
directions) through a transparent ``FaultProxy`` that adds 200 ms each way
from before the requester starts. Jobs still complete. When the proxy resets
every connection while a job runs and refuses the first reconnection, the
requester re-attaches to the running job and collects its result. When the
reset destroys the countersigned lease on its way to the provider, the
provider never starts the job and the requester places it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from peerd.devnet import NodeProc, wait_for
from tests.integration.cli import cli_json, submit, wait_final, wait_leased
from tests.integration.faultproxy import FaultProxy, ProxyThread
from tests.integration.netns import NetnsDevNet, netns_devnet, transparent_proxy

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PROXY_PORT = 7777
DELAY = 0.2
PROVIDERS = ("provider-1", "provider-2")


@dataclass
class SlowNet:
    net: NetnsDevNet
    proxy: FaultProxy
    loop: ProxyThread

    def provider(self, peer_id: str) -> NodeProc:
        return next(self.net.nodes[n] for n in PROVIDERS if self.net.nodes[n].status()["peer_id"] == peer_id)


@pytest.fixture
def slow() -> Iterator[SlowNet]:
    with netns_devnet() as devnet, ProxyThread() as loop:
        devnet.add_seed()
        for name in PROVIDERS:
            devnet.add(name, "provider")
        host = devnet.network.add_host("requester")
        devnet.network.intercept("requester", PROXY_PORT)
        proxy = loop.start(transparent_proxy(host, PROXY_PORT))
        proxy.set_delay(DELAY)
        devnet.add("requester", "requester")
        devnet.wait_adverts("requester", list(PROVIDERS))
        yield SlowNet(devnet, proxy, loop)


def test_jobs_complete_over_a_link_with_200ms_each_way(slow: SlowNet) -> None:
    requester = slow.net.nodes["requester"]
    view = submit(requester, "echo slow but sure", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "slow but sure\n", view
    assert view["receipt"]["verified"] is True  # type: ignore[index]
    # the requester's traffic really went through the delaying proxy: to the seed and to the provider
    assert slow.proxy.counters["forwarded"] >= 2 and slow.proxy.counters["bytes"] > 0, slow.proxy.counters
    assert slow.proxy.faults.delay == DELAY


def test_connections_reset_mid_job_the_requester_reattaches_and_gets_the_result(slow: SlowNet) -> None:
    requester = slow.net.nodes["requester"]
    # the job outlasts requester.provider_timeout (5 s) after the reset
    task_id = str(submit(requester, "sleep 12; echo done", wait=False)["task_id"])
    provider_id = wait_leased(requester, task_id)
    provider = slow.provider(provider_id)
    wait_for("the provider to run the job", lambda: provider.status()["tasks_running"] == 1, 30)
    refused_before = slow.proxy.counters["refused"]
    slow.proxy.set_refuse(True)
    reset = slow.loop.call(slow.proxy.reset_all)
    assert isinstance(reset, int) and reset >= 1
    wait_for("the requester to try to reconnect (and be refused)",
             lambda: slow.proxy.counters["refused"] > refused_before, 20)
    slow.proxy.set_refuse(False)

    view = wait_final(requester, task_id, 60)
    assert view["state"] == "succeeded", (
        f"after its connections were reset mid-job the requester ended the task {view['state']!r} "
        f"({view['detail']}) though the provider kept running it; attempts: {view['attempts']}"
    )
    assert view["provider"] == provider_id and view["stdout"] == "done\n"
    attempts = view["attempts"]
    assert isinstance(attempts, list)
    assert [a["outcome"] for a in attempts].count("accepted") == 1, f"placed again, not resumed: {attempts}"


def test_reset_while_the_countersigned_lease_is_in_flight_the_job_is_placed_again(slow: SlowNet) -> None:
    requester = slow.net.nodes["requester"]
    # 0.9 s each way: the requester records the lease (state "running") 0.9 s before the
    # provider can receive it; opening a stream (2 round trips) still fits connect_timeout (5 s)
    slow.proxy.set_delay(0.9)
    task_id = str(submit(requester, "echo placed again", wait=False)["task_id"])

    def leased_here() -> str | None:
        view = requester.call("task", {"task_id": task_id})
        assert isinstance(view, dict)
        return str(view["provider"]) if view["state"] == "running" else None

    first_id = wait_for("the requester to sign the lease", leased_here, 40, interval=0.02)
    slow.loop.call(slow.proxy.reset_all)  # the countersigned lease dies in the proxy's queue
    slow.proxy.set_delay(DELAY)

    view = wait_final(requester, task_id, 60)
    assert view["state"] == "succeeded" and view["stdout"] == "placed again\n", (view["detail"], view["attempts"])
    first = [(a["outcome"], a["reason"]) for a in view["attempts"] if a["provider"] == first_id]  # type: ignore[union-attr]
    # it answered (signed) that it holds no such lease: recorded as its refusal, not as a vanished provider
    assert ("rejected", "unknown_task") in first, view["attempts"]
    assert all(outcome != "lost" for outcome, _ in first), view["attempts"]
    # the provider that never got the countersigned lease never ran the job and holds nothing for it
    cut_short = slow.provider(first_id)
    assert cut_short.status()["tasks_running"] == 0
    if view["provider"] != first_id:
        tasks = cli_json(cut_short, "tasks")
        assert isinstance(tasks, list) and task_id not in {t["task_id"] for t in tasks}, tasks
