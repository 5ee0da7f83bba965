"""A requester SIGKILLed mid-job and restarted: the task survives and gets its result.

Real ``peerd run`` processes on 127.0.0.1 and a real dockerd. The requester's
task record, lease and attempts are in its SQLite store; after a restart it
resumes the leased task on the provider (``Resume``), which kept running the
job on its own, and collects the result and the co-signed receipt.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from peerd.devnet import DevNet, wait_for
from tests.integration.cli import IMAGE, show, start_nodes, wait_final

pytestmark = [pytest.mark.integration, pytest.mark.docker]



@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet)



def start_job(net: DevNet, script: str) -> str:
    requester = net.nodes["requester"]
    out = requester.peerd("submit", "--image", IMAGE, "--json", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    task_id = str(json.loads(out.stdout)["task_id"])
    wait_for("the job to be leased", lambda: show(requester, task_id)["state"] == "running", 30)
    return task_id


def kill_and_restart(net: DevNet) -> None:
    requester = net.nodes["requester"]
    assert net.stop("requester", signal.SIGKILL) == -signal.SIGKILL
    net.start(requester)



def assert_completed_after_restart(view: dict[str, object], provider_id: str) -> None:
    assert view["state"] == "succeeded", (
        f"after a requester restart the leased task ended {view['state']!r} ({view['detail']}) instead of "
        f"collecting the provider's result; attempts: {view['attempts']}"
    )
    assert view["provider"] == provider_id and view["stdout"] == "done\n", view
    receipt = view["receipt"]
    assert isinstance(receipt, dict) and receipt["verified"] is True
    attempts = view["attempts"]
    assert isinstance(attempts, list)
    leases = [a for a in attempts if a["outcome"] == "accepted"]
    assert len(leases) == 1, f"the job was placed again instead of resumed: {attempts}"


def test_requester_killed_while_the_job_runs_gets_the_result_after_restart(net: DevNet) -> None:
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    # the job runs on well past the requester's provider_timeout (8 s) after the restart
    task_id = start_job(net, "sleep 15; echo done")
    kill_and_restart(net)
    view = wait_final(requester, task_id, 60)
    assert_completed_after_restart(view, str(provider.status()["peer_id"]))
    # the provider holds the very receipt the requester countersigned after its restart
    # (the requester records it before sending the countersignature: wait for delivery)
    cosigned = view["receipt"]["cosigned"]  # type: ignore[index]
    wait_for("the provider to hold the co-signed receipt",
             lambda: cosigned in {r["cosigned"] for r in json.loads(provider.peerd("receipts", "--json").stdout)},
             15)


def test_requester_down_until_the_job_ended_still_gets_the_result(net: DevNet) -> None:
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    task_id = start_job(net, "sleep 2; echo done")
    assert net.stop("requester", signal.SIGKILL) == -signal.SIGKILL
    wait_for("the provider to finish the job", lambda: provider.status()["tasks_running"] == 0, 30)
    net.start(requester)
    view = wait_final(requester, task_id, 60)
    assert_completed_after_restart(view, str(provider.status()["peer_id"]))
    # the finished task survives another crash unchanged
    kill_and_restart(net)
    again = show(requester, task_id)
    assert (again["state"], again["stdout"], again["receipt"]) == (view["state"], view["stdout"], view["receipt"])
