"""Graceful drain of a provider: real `peerd run` processes, a real dockerd.

SIGTERM drains: jobs that end within ``limits.drain_grace`` finish normally;
the rest are stopped and reported ``interrupted`` to their requesters, with a
receipt signed by both, before the process exits 0. ``peerd drain`` makes a
provider refuse new tasks with a signed ``draining`` reject.
"""

from __future__ import annotations

import json
import signal
import time

from peerd.devnet import wait_for

from .harness import IMAGE, cli_json, containers_of, peer_id, provider_network, submit, wait_final, wait_output

SHORT_GRACE = '\n[limits]\ndrain_grace = "3s"\nstop_grace = "2s"\n'
LONG_GRACE = '\n[limits]\ndrain_grace = "120s"\n'


def test_sigterm_interrupts_a_job_past_the_grace_and_reports_it_to_the_requester() -> None:
    with provider_network(provider_extra=SHORT_GRACE) as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        provider_id = peer_id(provider)
        task_id = submit(requester, "sh", "-c", "echo started; sleep 600", options=("--timeout", "20m"))
        wait_output(requester, task_id, "started")

        assert net.stop("provider", signal.SIGTERM, timeout=120) == 0, provider.log_tail()

        # Reported to the requester before the provider went away: result and co-signed receipt.
        view = wait_final(requester, task_id, timeout=30)
        assert view["state"] == "interrupted", view
        assert view["stdout"] == "started\n" and view["provider"] == provider_id
        receipt = view["receipt"]
        assert isinstance(receipt, dict) and receipt["verified"] is True and receipt["state"] == "interrupted"
        assert containers_of(provider_id) == []

        # The provider's own record survived the stop: final state and the same co-signed receipt.
        net.start(provider)
        theirs = cli_json(provider, "show", task_id)
        assert theirs["role"] == "provider" and theirs["state"] == "interrupted", theirs
        assert isinstance(theirs["receipt"], dict) and theirs["receipt"]["cosigned"] == receipt["cosigned"]
        assert provider.status()["tasks_running"] == 0
        assert containers_of(provider_id) == []


def test_sigterm_lets_a_job_that_ends_within_the_grace_finish() -> None:
    with provider_network(provider_extra=LONG_GRACE) as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        provider_id = peer_id(provider)
        task_id = submit(requester, "sh", "-c", "echo started; sleep 4; echo done")
        wait_output(requester, task_id, "started")

        began = time.monotonic()
        assert net.stop("provider", signal.SIGTERM, timeout=150) == 0, provider.log_tail()
        took = time.monotonic() - began

        view = wait_final(requester, task_id, timeout=30)
        assert view["state"] == "succeeded", view
        assert view["stdout"] == "started\ndone\n"
        assert isinstance(view["receipt"], dict) and view["receipt"]["verified"] is True
        assert took < 120, f"the drain waited out the whole grace ({took:.1f}s) for a 4 s job"
        assert containers_of(provider_id) == []


def test_a_draining_provider_refuses_new_tasks_with_draining() -> None:
    with provider_network() as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        provider_id = peer_id(provider)
        drained = cli_json(provider, "drain")
        assert drained["draining"] is True
        assert provider.status()["draining"] is True

        # Asked directly, the provider answers with a signed `draining` reject.
        out = provider.peerd("submit", "--local", "--image", IMAGE, "--wait", "--json", "--", "true")
        assert out.returncode == 1, out.stderr
        view = json.loads(out.stdout)
        assert view["state"] == "not_placed", view
        assert [(a["outcome"], a["reason"]) for a in view["attempts"]] == [("rejected", "draining")]

        # Its advert says so, and a requester on the network no longer places work there.
        def draining_advert() -> bool:
            peers = requester.call("peers")
            assert isinstance(peers, list)
            return any(p["peer_id"] == provider_id and (p["advert"] or {}).get("draining") for p in peers)

        wait_for("the requester to hold the provider's draining advert", draining_advert, 30)
        out = requester.peerd("submit", "--image", IMAGE, "--wait", "--json", "--", "true")
        assert out.returncode == 1
        remote = json.loads(out.stdout)
        assert remote["state"] == "not_placed" and remote["provider"] in (None, ""), remote
        assert all(a["provider"] != provider_id or a["reason"] == "draining" for a in remote["attempts"])

        assert net.stop("provider", signal.SIGTERM, timeout=60) == 0, provider.log_tail()
