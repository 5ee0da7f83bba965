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

import pytest

from peerd.devnet import wait_for

from .harness import IMAGE, cli_json, containers_of, peer_id, provider_network, submit, wait_final, wait_output

pytestmark = pytest.mark.docker  # needs a real dockerd

# The provider waits up to its io_timeout for the requester's countersignature.
SHORT_GRACE = {"limits.drain_grace": '"3s"', "limits.stop_grace": '"2s"', "network.io_timeout": '"60s"'}
LONG_GRACE = {"limits.drain_grace": '"120s"'}
# A requester we freeze for a while must not give up on its provider meanwhile.
PATIENT = {"requester.provider_timeout": '"120s"', "network.io_timeout": '"120s"'}


def test_sigterm_interrupts_a_job_past_the_grace_and_reports_it_to_the_requester() -> None:
    with provider_network(SHORT_GRACE, PATIENT) as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        assert provider.proc is not None and requester.proc is not None
        provider_id = peer_id(provider)
        task_id = submit(requester, "sh", "-c", "echo started; sleep 600", options=("--timeout", "20m"))
        wait_output(requester, task_id, "started")

        # A slow requester: frozen while the provider drains, so the result and the receipt
        # proposal wait in the connection; the provider must stay up to take the countersignature.
        requester.proc.send_signal(signal.SIGSTOP)
        try:
            provider.proc.send_signal(signal.SIGTERM)

            def interrupted_or_gone() -> bool:
                if provider.proc.poll() is not None:  # type: ignore[union-attr]
                    return True
                view = provider.call("task", {"task_id": task_id})
                return isinstance(view, dict) and view["state"] == "interrupted"

            wait_for("the provider to interrupt the job", interrupted_or_gone, 90)
        finally:
            requester.proc.send_signal(signal.SIGCONT)
        assert provider.proc.wait(120) == 0, provider.log_tail()

        # Reported to the requester: result and receipt, both signed by both.
        view = wait_final(requester, task_id, timeout=60)
        assert view["state"] == "interrupted", view
        assert view["stdout"] == "started\n" and view["provider"] == provider_id
        receipt = view["receipt"]
        assert isinstance(receipt, dict) and receipt["verified"] is True and receipt["state"] == "interrupted"
        assert containers_of(provider_id) == []

        # The provider's record survived the stop: final state and the countersigned receipt,
        # which it only has if it stayed up until the requester answered.
        net.start(provider)
        theirs = cli_json(provider, "show", task_id)
        assert theirs["role"] == "provider" and theirs["state"] == "interrupted", theirs
        assert isinstance(theirs["receipt"], dict) and theirs["receipt"]["verified"] is True, theirs["receipt"]
        assert theirs["receipt"]["cosigned"] == receipt["cosigned"]
        assert provider.status()["tasks_running"] == 0
        assert containers_of(provider_id) == []


def test_sigterm_lets_a_job_that_ends_within_the_grace_finish() -> None:
    with provider_network(LONG_GRACE) as net:
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


def test_a_second_sigterm_cuts_the_grace_short() -> None:
    with provider_network(LONG_GRACE) as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        assert provider.proc is not None
        provider_id = peer_id(provider)
        task_id = submit(requester, "sh", "-c", "echo started; sleep 600", options=("--timeout", "20m"))
        wait_output(requester, task_id, "started")

        provider.proc.send_signal(signal.SIGTERM)
        wait_for("the provider to drain", lambda: provider.status()["draining"], 60)
        began = time.monotonic()
        provider.proc.send_signal(signal.SIGTERM)
        assert provider.proc.wait(110) == 0, provider.log_tail()
        assert time.monotonic() - began < 110  # well inside the 120 s grace

        view = wait_final(requester, task_id, timeout=60)
        assert view["state"] == "interrupted", view
        assert isinstance(view["receipt"], dict) and view["receipt"]["verified"] is True
        assert containers_of(provider_id) == []


def test_a_draining_provider_refuses_new_tasks_with_draining() -> None:
    with provider_network() as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        provider_id = peer_id(provider)
        drained = cli_json(provider, "drain")
        assert drained["draining"] is True
        assert provider.status()["draining"] is True

        # Asked directly, the provider answers with a signed `draining` reject (a task that may not wait
        # for room ends there; see tests/integration/test_queueing.py for the one that waits).
        out = provider.peerd("submit", "--local", "--queue-timeout", "0", "--image", IMAGE, "--wait", "--json",
                             "--", "true")
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
        out = requester.peerd("submit", "--queue-timeout", "0", "--image", IMAGE, "--wait", "--json", "--", "true")
        assert out.returncode == 1
        remote = json.loads(out.stdout)
        assert remote["state"] == "not_placed" and remote["provider"] in (None, ""), remote
        assert all(a["provider"] != provider_id or a["reason"] == "draining" for a in remote["attempts"])
        # Draining is "not now": a task that may wait is queued for the provider, not failed.
        waiting = cli_json(requester, "submit", "--image", IMAGE, "--", "true")["task_id"]
        wait_for("the task to be queued", lambda: cli_json(requester, "show", waiting)["state"] == "queued", 30)
        assert requester.peerd("cancel", waiting).returncode == 0

        assert net.stop("provider", signal.SIGINT, timeout=60) == 0, provider.log_tail()  # Ctrl-C: the same stop
