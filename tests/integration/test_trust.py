"""Trust among real peerd processes: replicas, a lying and a silent provider, reputation.

A seed, two honest providers and a requester on 127.0.0.1 (real dockerd), then
bad actors (tests/integration/badactor.py) that advertise the cheapest offer
there is, so the requester tries them first until their record says otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from tests.integration.badactor import bad_actor
from tests.integration.cli import start_nodes

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
HONEST = ("provider-1", "provider-2")


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet, HONEST)


def submit(node: NodeProc, *args: str) -> tuple[int, dict[str, object]]:
    out = node.peerd("submit", "--image", IMAGE, "--wait", "--json", *args)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def peer(node: NodeProc, peer_id: str) -> dict[str, object]:
    out = node.peerd("peer", peer_id, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def peer_ids(node: NodeProc) -> set[str]:
    out = node.peerd("peers", "--json")
    return {p["peer_id"] for p in json.loads(out.stdout)}


def chosen(view: dict[str, object]) -> set[str]:
    """Every provider the task was leased on or tried."""
    attempts = view["attempts"]
    assert isinstance(attempts, list)
    return {a["provider"] for a in attempts}


def test_two_replicas_on_two_honest_providers_are_verified(net: DevNet) -> None:
    code, view = submit(net.nodes["requester"], "--replicas", "2", "--", "echo", "same")
    assert code == 0, view
    verification = view["verification"]
    assert isinstance(verification, dict) and verification["mode"] == "replicas"
    assert verification["state"] == "verified", verification
    replicas = verification["replicas"]
    honest = {net.nodes[n].status()["peer_id"] for n in HONEST}
    assert {r["provider"] for r in replicas} == honest  # two distinct providers
    assert len({r["output_id"] for r in replicas}) == 1 and {r["exit_code"] for r in replicas} == {0}
    assert all(r["receipt"]["verified"] and r["verdict"] == "verified" for r in replicas)
    assert view["stdout"] == "same\n"


def test_a_spot_check_that_draws_the_second_run_compares_two_providers(net: DevNet) -> None:
    code, view = submit(net.nodes["requester"], "--spot-check", "1", "--", "echo", "checked")
    assert code == 0, view
    verification = view["verification"]
    assert isinstance(verification, dict) and verification["mode"] == "spot-check", verification
    assert verification["state"] == "verified" and verification["size"] == 2, verification
    assert len({r["provider"] for r in verification["replicas"]}) == 2
    code, view = submit(net.nodes["requester"], "--spot-check", "0", "--", "echo", "unchecked")
    assert code == 0 and "verification" not in view, view  # P = 0 is a plain job


def test_a_liar_is_out_voted_distrusted_and_then_gets_almost_no_work(net: DevNet, tmp_path: Path) -> None:
    requester = net.nodes["requester"]
    with bad_actor(tmp_path / "liar", net.seeds, lease="wrong-output") as liar:
        wait_for("the requester to hold the liar's advert", lambda: liar.peer_id in peer_ids(requester), 30)
        before = peer(requester, liar.peer_id)["reputation"]
        code, view = submit(requester, "--replicas", "3", "--", "echo", "honest")
        assert code == 0, view
        verification = view["verification"]
        assert isinstance(verification, dict) and verification["state"] == "majority", verification
        verdicts = {r["provider"]: r["verdict"] for r in verification["replicas"]}
        assert verdicts[liar.peer_id] == "disputed" and list(verdicts.values()).count("verified") == 2
        assert view["stdout"] == "honest\n" and view["provider"] != liar.peer_id
        assert all(r["receipt"] is not None for r in verification["replicas"])  # every signed receipt kept
        after = peer(requester, liar.peer_id)["reputation"]
        assert isinstance(before, dict) and isinstance(after, dict)
        assert after["score"] < before["score"] and after["distrusted"], after
        picked = 0
        for i in range(10):
            code, view = submit(requester, "--", "echo", str(i))
            assert code == 0 and view["stdout"] == f"{i}\n", view
            picked += liar.peer_id in chosen(view)
        assert picked <= 1
        out = requester.peerd("peers")
        assert "SCORE" in out.stdout


def test_a_provider_silent_after_leasing_is_recorded_lost_and_then_left_alone(net: DevNet, tmp_path: Path) -> None:
    requester = net.nodes["requester"]
    with bad_actor(tmp_path / "silent", net.seeds, lease="hang") as silent:
        wait_for("the requester to hold the silent one's advert", lambda: silent.peer_id in peer_ids(requester), 30)
        code, view = submit(requester, "--", "echo", "first")
        assert code == 0 and view["stdout"] == "first\n", view
        assert (silent.peer_id, "lost") in {(a["provider"], a["outcome"]) for a in view["attempts"]}
        record = peer(requester, silent.peer_id)
        assert record["reputation"]["distrusted"], record  # type: ignore[index]
        assert "lost" in {h["event"] for h in record["history"]}  # type: ignore[union-attr]
        picked = 0
        for i in range(5):
            code, view = submit(requester, "--", "echo", str(i))
            assert code == 0, view
            picked += silent.peer_id in chosen(view)
        assert picked <= 1


def test_reputation_survives_a_restart(net: DevNet) -> None:
    requester = net.nodes["requester"]
    honest = net.nodes["provider-1"].status()["peer_id"]
    assert isinstance(honest, str)
    before = peer(requester, honest)
    net.stop("requester")
    net.start(requester)
    after = peer(requester, honest)
    assert after["reputation"]["counts"] == before["reputation"]["counts"]  # type: ignore[index]
    assert after["reputation"]["counts"]["verified"] >= 1  # type: ignore[index]
    assert [h["task_id"] for h in after["history"]] == [h["task_id"] for h in before["history"]]  # type: ignore[union-attr]
