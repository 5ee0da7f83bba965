"""A burst of jobs waits for capacity instead of failing: real ``peerd run`` processes, a real dockerd.

Each provider offers this machine's CPUs and runs at most 8 jobs (``[policy] max_concurrent``); tasks that
find no room wait ``queued`` at their requester, holding nothing, and are placed as slots free.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from peerd.devnet import DevNet, DevNetError, NodeProc, wait_for
from protocol.messages import JobSpec
from tests.integration.cli import FINAL_STATES, IMAGE, show, start_nodes, wait_final

pytestmark = pytest.mark.docker  # needs a real dockerd

QUARTER = 0.25
SLEEP = JobSpec(image=IMAGE, command=("sleep", "3"), cpus=QUARTER, timeout=120)


def submit(node: NodeProc, spec: JobSpec, **args: object) -> str:
    answer = node.call("submit", {"spec": spec.to_wire(), "local": False, **args})
    assert isinstance(answer, dict)
    return str(answer["task_id"])


def wait_all(node: NodeProc, task_ids: list[str], timeout: float) -> list[dict[str, object]]:
    def every() -> list[dict[str, object]] | None:
        views = [node.call("task", {"task_id": t}) for t in task_ids]
        done = [v for v in views if isinstance(v, dict) and v["state"] in FINAL_STATES]
        return done if len(done) == len(task_ids) else None

    return wait_for(f"{len(task_ids)} tasks on {node.name} to end", every, timeout, interval=0.5)


def docker_burst(count: int, concurrency: int) -> float:
    """Seconds for ``count`` plain ``docker run --rm`` of the same job, ``concurrency`` at a time."""
    command = ["docker", "run", "--rm", "--cpus", str(QUARTER), IMAGE, *SLEEP.command]
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(lambda _: subprocess.run(command, capture_output=True).returncode, range(count)))
    assert codes == [0] * count
    return time.monotonic() - began


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet, ["provider-1", "provider-2"])


def test_a_burst_of_30_jobs_all_run_within_1_5x_of_plain_docker(net: DevNet) -> None:
    requester = net.nodes["requester"]
    began = time.monotonic()
    task_ids = [submit(requester, SLEEP) for _ in range(30)]
    views = wait_all(requester, task_ids, timeout=180)
    peerd = time.monotonic() - began
    assert [v["state"] for v in views] == ["succeeded"] * 30, [(v["state"], v["detail"]) for v in views]
    queued = [v for v in views if any(a["outcome"] == "rejected" for a in v["attempts"])]  # type: ignore[union-attr]
    assert queued, "no task had to wait: the burst did not test queueing"
    docker = docker_burst(30, concurrency=16)
    print(f"30 x sleep 3: peerd {peerd:.1f}s, docker run x16 {docker:.1f}s, ratio {peerd / docker:.2f}")
    assert peerd <= 1.5 * docker


def test_two_requesters_bursting_at_once_both_start_in_the_first_round_of_slots(net: DevNet) -> None:
    other = net.nodes.get("requester-2") or net.add("requester-2", "requester")
    net.wait_adverts("requester-2", ["provider-1", "provider-2"])
    requesters = [net.nodes["requester"], other]
    short = JobSpec(image=IMAGE, command=("sleep", "2"), cpus=QUARTER, timeout=120)
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda node: [submit(node, short) for _ in range(20)], requesters))
    for node, batch in zip(requesters, batches, strict=True):
        views = wait_all(node, batch, timeout=240)
        assert [v["state"] for v in views] == ["succeeded"] * 20, [v["detail"] for v in views]
    # when each task started: its record on the provider that ran it is made at the lease
    started: dict[str, float] = {}
    for name in ("provider-1", "provider-2"):
        for view in net.nodes[name].call("tasks", {"limit": 1000}):  # type: ignore[union-attr]
            started[view["task_id"]] = view["created_at"]
    first_round = sorted((t for batch in batches for t in batch), key=started.__getitem__)[:16]  # 2 x 8 slots
    for batch in batches:
        assert set(batch) & set(first_round), "one requester's burst took every slot of the first round"


def test_a_queued_task_survives_a_requester_restart_and_a_cancelled_one_never_runs(net: DevNet) -> None:
    requester = net.nodes["requester"]
    hold = JobSpec(image=IMAGE, command=("sleep", "20"), cpus=QUARTER, timeout=120)  # outlasts placing all 16
    holders = [submit(requester, hold) for _ in range(16)]
    wait_for("16 jobs to run", lambda: all(show(requester, t)["state"] == "running" for t in holders), 60)
    later, cancelled = submit(requester, SLEEP), submit(requester, SLEEP)
    try:
        wait_for("the two to be queued",
                 lambda: all(show(requester, t)["state"] == "queued" for t in (later, cancelled)), 30)
    except DevNetError:
        raise AssertionError([show(requester, t) for t in (later, cancelled)]) from None
    assert requester.peerd("cancel", cancelled).returncode == 0
    assert wait_final(requester, cancelled, 30)["state"] == "cancelled"
    net.stop("requester", signal.SIGKILL)
    net.start(requester)
    assert show(requester, later)["state"] in ("queued", "placing", "running")
    assert wait_final(requester, later, 120)["state"] == "succeeded"
    wait_all(requester, holders, timeout=120)
    for name in ("provider-1", "provider-2"):
        ran = {t["task_id"] for t in net.nodes[name].call("tasks", {"limit": 200})}  # type: ignore[union-attr]
        assert cancelled not in ran


def test_a_job_no_provider_could_ever_run_is_not_placed_at_once(net: DevNet) -> None:
    requester = net.nodes["requester"]
    began = time.monotonic()
    task_id = submit(requester, JobSpec(image=IMAGE, command=("true",), gpus=8, timeout=60))
    view = wait_final(requester, task_id, 30)
    assert view["state"] == "not_placed", view
    assert time.monotonic() - began < 15
