"""Real `peerd run` processes on loopback, a real dockerd, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from peerd.devnet import DevNet, wait_for
from tests.integration.cli import start_nodes

pytestmark = pytest.mark.docker  # needs a real dockerd

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet, ["provider-1", "provider-2"])


def submit(net: DevNet, *args: str) -> tuple[int, dict[str, object]]:
    out = net.nodes["requester"].peerd("submit", "--image", IMAGE, "--wait", "--json", *args)
    return out.returncode, json.loads(out.stdout)


def test_peers_shows_the_providers_adverts(net: DevNet) -> None:
    out = net.nodes["requester"].peerd("peers", "--json")
    assert out.returncode == 0
    peers = json.loads(out.stdout)
    providers = {net.nodes[n].status()["peer_id"] for n in ("provider-1", "provider-2")}
    assert providers <= {p["peer_id"] for p in peers}
    advert = next(p for p in peers if p["peer_id"] in providers)["advert"]
    assert {"gpus", "price_cpu_hour", "expires_at"} <= set(advert)


def test_job_runs_on_a_provider_with_a_receipt_signed_by_both(net: DevNet) -> None:
    code, view = submit(net, "--", "echo", "hello")
    assert code == 0, view
    assert view["state"] == "succeeded" and view["exit_code"] == 0 and view["stdout"] == "hello\n"
    providers = {net.nodes[n].status()["peer_id"] for n in ("provider-1", "provider-2")}
    assert view["provider"] in providers
    receipt = view["receipt"]
    assert isinstance(receipt, dict) and receipt["verified"] is True
    # the provider holds the very same co-signed receipt
    provider = next(n for n in ("provider-1", "provider-2") if net.nodes[n].status()["peer_id"] == view["provider"])
    # the requester records the receipt before it sends its countersignature, so
    # the provider holds the very same bytes a moment later
    wait_for(
        "the provider to hold the same co-signed receipt",
        lambda: receipt["cosigned"] in {r["cosigned"] for r in
                                        json.loads(net.nodes[provider].peerd("receipts", "--json").stdout)},
        10,
    )


def test_a_job_nobody_can_take_ends_not_placed_with_reasons(net: DevNet) -> None:
    started = time.monotonic()
    code, view = submit(net, "--gpus", "8", "--", "true")
    assert code == 1
    assert view["state"] == "not_placed"
    assert time.monotonic() - started < 20  # promptly
    providers = {net.nodes[n].status()["peer_id"] for n in ("provider-1", "provider-2")}
    attempts = view["attempts"]
    assert isinstance(attempts, list)
    assert {a["provider"] for a in attempts} == providers  # each provider answered for itself
    assert all(a["outcome"] == "rejected" and a["reason"] == "no_gpu_runtime" for a in attempts), attempts
    assert "no_gpu_runtime" in str(view["detail"])


@pytest.mark.parametrize("variable", ["NVIDIA_FOO=1", "NVIDIA_VISIBLE_DEVICES=all", "DOCKER_RESOURCE_GPU=all"])
def test_a_job_setting_a_reserved_gpu_variable_is_refused_before_any_lease(net: DevNet, variable: str) -> None:
    requester = net.nodes["requester"]
    nodes = [net.nodes[n] for n in ("requester", "provider-1", "provider-2")]
    before = [json.loads(node.peerd("tasks", "--json").stdout) for node in nodes]
    out = requester.peerd("submit", "--image", IMAGE, "--gpus", "0", "--env", variable, "--wait", "--json",
                          "--", "true")
    name = variable.partition("=")[0]
    assert out.returncode == 2 and out.stdout == "", out
    assert f"--env sets '{name}'" in out.stderr and "reserved for the provider" in out.stderr, out.stderr
    assert [json.loads(node.peerd("tasks", "--json").stdout) for node in nodes] == before  # no task, no lease


def test_provider_killed_mid_job_the_job_completes_elsewhere(net: DevNet) -> None:
    requester = net.nodes["requester"]
    out = requester.peerd("submit", "--image", IMAGE, "--json", "--", "sh", "-c", "sleep 4; echo done")
    task_id = json.loads(out.stdout)["task_id"]

    def leased_on() -> str | None:
        view = json.loads(requester.peerd("show", task_id, "--json").stdout)
        return view["provider"] if view["state"] == "running" and view["provider"] else None

    provider_id = wait_for("the job to be leased", leased_on, 30)
    victim = next(n for n in ("provider-1", "provider-2") if net.nodes[n].status()["peer_id"] == provider_id)
    net.stop(victim, signal.SIGKILL)

    def finished() -> dict[str, object] | None:
        out = requester.peerd("show", task_id, "--json")
        if out.returncode != 0:
            raise AssertionError(f"peerd show failed: {out.stderr}")
        view = json.loads(out.stdout)
        return view if view["state"] in ("succeeded", "failed", "not_placed", "lost") else None

    done = wait_for("the job to finish elsewhere", finished, 90)
    assert done["state"] == "succeeded", (done["detail"], done["attempts"])
    assert done["provider"] != provider_id and done["stdout"] == "done\n"
    assert any(a["outcome"] == "lost" for a in done["attempts"]), done
    # the killed provider, restarted, leaves no orphan container and no reserved capacity
    net.start(net.nodes[victim])
    wait_for("the restarted provider to reconcile",
             lambda: net.nodes[victim].status()["tasks_running"] == 0, 30)
    node_id = provider_id
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=peerd.node={node_id}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []


def test_requester_restarted_mid_job_still_gets_the_result(net: DevNet) -> None:
    requester = net.nodes["requester"]
    out = requester.peerd("submit", "--image", IMAGE, "--json", "--", "sh", "-c", "sleep 3; echo survived")
    task_id = json.loads(out.stdout)["task_id"]

    def state() -> str:
        return str(json.loads(requester.peerd("show", task_id, "--json").stdout)["state"])

    wait_for("the job to be leased", lambda: state() == "running", 30)
    net.stop("requester", signal.SIGKILL)
    net.start(requester)
    view = wait_for(
        "the restarted requester to obtain the result",
        lambda: (v := json.loads(requester.peerd("show", task_id, "--json").stdout))["state"] != "running" and v,
        90,
    )
    assert view["state"] == "succeeded", (view["detail"], view["attempts"])
    assert view["stdout"] == "survived\n"
    assert view["receipt"] and view["receipt"]["verified"]


def test_logs_follow_streams_and_cancel_stops_a_long_job_within_seconds(net: DevNet) -> None:
    requester = net.nodes["requester"]
    out = requester.peerd("submit", "--image", IMAGE, "--json", "--", "sh", "-c",
                          "echo first; sleep 1; echo second; sleep 600")
    task_id = json.loads(out.stdout)["task_id"]
    follow = subprocess.Popen(
        [sys.executable, "-m", "peerd.cli", "--home", str(requester.home), "logs", "-f", task_id],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert follow.stdout is not None
        # lines arrive while the job runs (it would run for ten minutes)
        assert follow.stdout.readline() == "first\n"
        assert follow.stdout.readline() == "second\n"
        started = time.monotonic()
        cancelled = requester.peerd("cancel", task_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert follow.wait(timeout=30) == 0  # the follower ends with the task
    finally:
        follow.kill()
        follow.wait()
    view = wait_for(
        "the job to stop",
        lambda: (v := json.loads(requester.peerd("show", task_id, "--json").stdout))["state"] != "running" and v,
        30,
    )
    assert view["state"] == "cancelled", view
    assert time.monotonic() - started < 15
