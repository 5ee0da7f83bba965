"""Offer squatting: one free identity asks every provider for everything and never accepts.

A seed, two providers and a requester run as real ``peerd run`` processes; a
bad actor (tests/integration/badactor.py ``--squat``) with a fresh key keeps
three streams per provider asking for the provider's whole capacity at the
maximum price, never accepting and asking again whenever an offer expires or
is refused (the providers' lapse bound is raised, so the squatter keeps its
offers open throughout; tests/jobs/test_task_flow.py covers that bound). Offers are
quotes, so the providers' adverts keep showing their capacity free and the honest
requester's jobs are placed and complete while the attack runs; the attacker's third stream per
provider is refused ``busy``.
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
from tests.integration.cli import start_nodes

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
PROVIDERS = ("provider-1", "provider-2")
JOBS = 4


class PatientNet(DevNet):
    """Providers that never tire of the squatter (a high ``lapsed_offers``), so it holds offers throughout."""

    def config_text(self, node: NodeProc) -> str:
        bounds = "[policy]\nlapsed_offers = 1000\noffers_per_peer = 2\n"
        return super().config_text(node).replace("[policy]\n", bounds, 1)


@pytest.fixture
def net() -> Iterator[DevNet]:
    with PatientNet() as devnet:
        yield start_nodes(devnet, PROVIDERS)


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
        # adverts issued after the jobs, while the squatter holds offers, show all capacity free
        jobs_done = time.time() + 1.0

        def fresh_adverts() -> dict[str, dict[str, object]] | None:
            found = {p: a for p, a in adverts(requester).items() if p in provider_ids}
            fresh = all(float(a["issued_at"]) > jobs_done for a in found.values())  # type: ignore[arg-type]
            return found if len(found) == len(provider_ids) and fresh else None

        def holding_on_both() -> bool:
            return all(squat(actor).holding.get(p, 0) > 0 for p in provider_ids)

        wait_for("the squatter to hold offers on both providers", holding_on_both, 5)  # it re-asks at once
        fresh = wait_for("adverts issued during the attack", fresh_adverts, 30)
        wait_for("the squatter to hold offers on both providers", holding_on_both, 5)
        for advert in fresh.values():
            assert advert["free_cpus"] == advert["cpus"] and advert["free_memory"] == advert["memory"], advert
        still = squat(actor)
        assert still.offers >= 2 and any(n > 0 for n in still.holding.values()), still
        # the squatter's third stream per provider is over the per-peer bound of open offers
        assert still.rejects.get("busy", 0) > 0, still
