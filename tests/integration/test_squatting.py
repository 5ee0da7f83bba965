"""Offer squatting: one free identity asks every provider for everything and never accepts.

A seed, two providers and a requester run as real ``peerd run`` processes; a
bad actor (tests/integration/badactor.py ``--squat``) with a fresh key keeps
three streams per provider asking for the provider's whole capacity at the
maximum price, never accepting and asking again whenever an offer expires or
is refused. Offers are quotes, so the providers' adverts keep showing their
capacity free and the honest requester's jobs are placed and complete while
the attack runs; the attacker's third stream per provider is refused ``busy``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from tests.integration.badactor import BadActorProcess, bad_actor

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
PROVIDERS = ("provider-1", "provider-2")
JOBS = 4


@pytest.fixture
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        devnet.add_seed()
        for name in PROVIDERS:
            devnet.add(name, "provider")
        devnet.add("requester", "requester")
        devnet.wait_adverts("requester", list(PROVIDERS))
        yield devnet


def adverts(requester: NodeProc) -> dict[str, dict[str, object]]:
    out = requester.peerd("peers", "--json")
    assert out.returncode == 0, out.stderr
    return {p["peer_id"]: p["advert"] for p in json.loads(out.stdout)}


@dataclass(frozen=True)
class Squat:
    """What the squatter reported: offers got, refusals by code, offers it holds open per provider."""

    offers: int
    rejects: dict[str, int]
    holding: dict[str, int]


def squat(actor: BadActorProcess) -> Squat:
    state = actor.state()
    assert state is not None
    found = state["squat"]
    assert isinstance(found, dict)
    return Squat(int(found["offers"]), dict(found["rejects"]), dict(found["holding"]))


def test_a_squatter_never_accepting_locks_no_capacity(net: DevNet, tmp_path: Path) -> None:
    requester = net.nodes["requester"]
    provider_ids = {str(net.nodes[n].status()["peer_id"]) for n in PROVIDERS}
    with bad_actor(tmp_path / "squatter", net.seeds, squat=3) as actor:
        # the attack is on: unaccepted offers for everything are open on both providers
        wait_for("the squatter to hold offers on both providers",
                 lambda: provider_ids <= {p for p, n in squat(actor).holding.items() if n > 0}, 30)
        attack_began = time.time()
        # the honest requester's jobs are placed and complete meanwhile
        task_ids = []
        for n in range(JOBS):
            out = requester.peerd("submit", "--image", IMAGE, "--cpus", "0.5", "--json", "--", "echo", f"job {n}")
            assert out.returncode == 0, out.stderr
            task_ids.append(json.loads(out.stdout)["task_id"])

        def finished() -> list[dict[str, object]] | None:
            views = [json.loads(requester.peerd("show", t, "--json").stdout) for t in task_ids]
            return views if all(v["state"] not in ("pending", "placing", "running") for v in views) else None

        views = wait_for("the honest jobs to finish", finished, 60)
        for n, view in enumerate(views):
            assert view["state"] == "succeeded", (view["detail"], view["attempts"])
            assert view["stdout"] == f"job {n}\n" and view["provider"] in provider_ids
        # adverts issued while the squatter held offers still show the capacity free
        def fresh_adverts() -> dict[str, dict[str, object]] | None:
            found = {p: a for p, a in adverts(requester).items() if p in provider_ids}
            fresh = all(float(a["issued_at"]) > attack_began for a in found.values())  # type: ignore[arg-type]
            return found if len(found) == len(provider_ids) and fresh else None

        for advert in wait_for("adverts issued during the attack", fresh_adverts, 30).values():
            assert advert["free_cpus"] == advert["cpus"] and advert["free_memory"] == advert["memory"], advert
        still = squat(actor)
        assert still.offers >= 2 and any(n > 0 for n in still.holding.values()), still
        # the squatter's third stream per provider is over the per-peer bound of open offers
        assert still.rejects.get("busy", 0) > 0, still
