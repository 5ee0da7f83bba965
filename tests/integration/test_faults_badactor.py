"""Bad actors among real peerd processes: the honest nodes keep working.

Two bad-actor processes (tests/integration/badactor.py) join a seed, a
provider and a requester on 127.0.0.1. Both advertise the cheapest offer on
the network, so the requester tries them first. One also floods adverts and
keeps sending forged, replayed and mis-bound ones; it takes leases and never
runs them. The other returns a result whose receipt does not match it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from tests.integration.badactor import BadActorProcess, bad_actor
from tests.integration.cli import start_nodes

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
HONEST = ("seed", "provider", "requester")
DROPS = ("rate_limited", "bad_signature", "replayed", "wrong_source")


@pytest.fixture
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet)


def counters(node: NodeProc) -> dict[str, int]:
    out = node.peerd("status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["counters"])


def peer_ids(node: NodeProc) -> set[str]:
    out = node.peerd("peers", "--json")
    assert out.returncode == 0, out.stderr
    return {p["peer_id"] for p in json.loads(out.stdout)}


def dropped(net: DevNet) -> dict[str, int]:
    """Every kind of dropped advert, summed over the honest nodes."""
    totals = dict.fromkeys(DROPS, 0)
    for name in HONEST:
        found = counters(net.nodes[name])
        for kind in DROPS:
            totals[kind] += found[kind]
    return totals


def test_bad_adverts_are_dropped_and_counted_and_jobs_go_to_honest_providers(net: DevNet, tmp_path: Path) -> None:
    requester = net.nodes["requester"]
    honest_id = net.nodes["provider"].status()["peer_id"]
    before = dropped(net)
    with (
        bad_actor(tmp_path / "hang", net.seeds, lease="hang", flood=40, attacks=True) as hang,
        bad_actor(tmp_path / "liar", net.seeds, lease="wrong-digest") as liar,
    ):
        wait_for("the requester to hold both bad actors' adverts",
                 lambda: {hang.peer_id, liar.peer_id} <= peer_ids(requester), 30)

        out = requester.peerd("submit", "--image", IMAGE, "--wait", "--json", "--", "echo", "hello")
        view = json.loads(out.stdout)
        assert out.returncode == 0 and view["state"] == "succeeded", view
        assert view["provider"] == honest_id and view["stdout"] == "hello\n"
        assert view["receipt"]["verified"] is True
        outcomes = {(a["provider"], a["outcome"]) for a in view["attempts"]}
        assert (hang.peer_id, "lost") in outcomes, view["attempts"]
        assert (liar.peer_id, "error") in outcomes, view["attempts"]
        assert view["task_id"] in _leased(hang) and view["task_id"] in _leased(liar)

        def every_kind_counted() -> dict[str, int] | None:
            now = dropped(net)
            return now if all(now[k] > before[k] for k in DROPS) else None

        wait_for(f"honest nodes to count every kind of bad advert (sent {hang.state()})", every_kind_counted, 20)
        stranger = str((hang.state() or {})["stranger"])
        for name in HONEST:  # the mis-bound advert's signer was never stored anywhere
            assert stranger not in peer_ids(net.nodes[name]), name
        # the flood evicted nobody: the honest provider is still known, and a second job runs
        assert honest_id in peer_ids(requester)
    out = requester.peerd("submit", "--image", IMAGE, "--wait", "--json", "--", "echo", "again")
    assert out.returncode == 0 and json.loads(out.stdout)["stdout"] == "again\n", out.stdout


def _leased(actor: BadActorProcess) -> list[str]:
    state = actor.state() or {}
    leased = state.get("leased", [])
    assert isinstance(leased, list)
    return [str(t) for t in leased]
