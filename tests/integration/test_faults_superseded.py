"""A provider down past ``provider_timeout``, then back: the job runs to completion once.

Real ``peerd run`` processes on 127.0.0.1 and a real dockerd. Provider A gets
the task and is SIGKILLed while the job runs (its container runs on in
dockerd); the requester gives A ``provider_timeout`` to come back, then places
the task on B. A is restarted and re-attaches the container; the requester
tells it the lease was superseded (Resume, then Cancel "superseded"), so A
stops and removes the container and both sides keep a co-signed receipt for
the time it ran there. The task completes on B only.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from peerd.executor.plan import LABEL_NODE, LABEL_TASK
from tests.integration.cli import IMAGE, show, start_nodes, wait_final

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PROVIDER_TIMEOUT = 3  # seconds
# outlasts A's downtime (kill, provider_timeout, re-placement, restart) and the requester's
# retry interval (at most provider_timeout); stops at once when told (PID 1 ignores an untrapped TERM)
JOB = "trap 'exit 143' TERM; sleep 25 & wait $!; echo done"


class QuickNet(DevNet):
    """The devnet with a short ``provider_timeout``, so the task moves on quickly."""

    def config_text(self, node: NodeProc) -> str:
        text = super().config_text(node)
        assert 'provider_timeout = "8s"' in text
        return text.replace('provider_timeout = "8s"', f'provider_timeout = "{PROVIDER_TIMEOUT}s"')


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with QuickNet() as devnet:
        yield start_nodes(devnet, ["provider-1", "provider-2"])




def task_containers(node_id: str, task_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_NODE}={node_id}",
         "--filter", f"label={LABEL_TASK}={task_id}"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.split()


def test_a_provider_down_past_provider_timeout_does_not_run_the_job_twice(net: DevNet) -> None:
    requester = net.nodes["requester"]
    ids = {name: str(net.nodes[name].status()["peer_id"]) for name in ("provider-1", "provider-2")}
    out = requester.peerd("submit", "--image", IMAGE, "--json", "--", "sh", "-c", JOB)
    assert out.returncode == 0, out.stderr
    task_id = str(json.loads(out.stdout)["task_id"])

    def leased_on() -> str | None:
        view = show(requester, task_id)
        return str(view["provider"]) if view["state"] == "running" and view["provider"] else None

    first = wait_for("the job to be leased", leased_on, 30)
    a_name = next(name for name, peer in ids.items() if peer == first)
    b_id = next(peer for peer in ids.values() if peer != first)
    wait_for("the job's container to run on A", lambda: task_containers(first, task_id), 30)

    assert net.stop(a_name, signal.SIGKILL) == -signal.SIGKILL
    assert task_containers(first, task_id), "the container runs on in dockerd while A is down"
    wait_for("the requester to place the task on B", lambda: leased_on() == b_id, 30)
    net.start(net.nodes[a_name])  # A re-attaches the container it left running

    view = wait_final(requester, task_id, 60)
    assert view["state"] == "succeeded" and view["provider"] == b_id and view["stdout"] == "done\n", view
    receipt = view["receipt"]
    assert isinstance(receipt, dict) and receipt["verified"] is True and receipt["provider"] == b_id

    # A was told: no container of the task is left there, and it never completed the job
    wait_for("A to remove the task's container", lambda: not task_containers(first, task_id), 30)
    a_view = wait_final(net.nodes[a_name], task_id, 30)
    assert a_view["state"] == "cancelled" and "superseded" in str(a_view["detail"]), a_view
    assert "done" not in str(a_view["stdout"]), a_view

    # the requester's record says what happened to A's lease, with the receipt for the time it ran
    def superseded() -> dict[str, object] | None:
        attempts = show(requester, task_id)["attempts"]
        assert isinstance(attempts, list)
        return next((a for a in attempts if a["outcome"] == "superseded" and a["provider"] == first), None)

    entry: dict[str, object] = wait_for("the requester to record A's lease as superseded", superseded, 30)
    assert str(entry["detail"]).startswith("stopped on the provider: cancelled"), entry
    attempts = show(requester, task_id)["attempts"]
    assert isinstance(attempts, list)
    assert [a["provider"] for a in attempts if a["outcome"] == "accepted"] == [first, b_id], attempts
    # A holds a receipt for the task (its own, co-signed by the requester), and so does B
    a_receipts = json.loads(net.nodes[a_name].peerd("receipts", "--json").stdout)
    mine = [r for r in a_receipts if r["task_id"] == task_id]
    assert len(mine) == 1 and mine[0]["state"] == "cancelled", a_receipts
    wait_for("A to hold the requester's countersignature", lambda: any(
        r["task_id"] == task_id and r["verified"]
        for r in json.loads(net.nodes[a_name].peerd("receipts", "--json").stdout)), 15)
