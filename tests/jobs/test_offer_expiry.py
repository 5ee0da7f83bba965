"""One expiry rule for offers on both sides (``Negotiation.offer_expired``: at and after ``expires_at``).

A provider answers a late Accept with ``Reject(offer_expired)`` (tests/jobs/test_failure_paths.py); a requester
whose own clock says the offer has expired does not accept it: it declines with a Cancel, which the provider
counts as declined, not as a lapse against the requester.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing

from protocol.messages import JobSpec, TaskState
from tests.jobs.harness import CPUS, Net, provider_node, requester_node

QUICK = JobSpec(image="fake/quick", command=("true",), timeout=60)


async def test_a_requester_declines_an_offer_its_clock_says_has_expired(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        r.requester.clock = lambda: time.time() + 100.0  # well past the provider's 15 s offers
        task_id = await r.run(QUICK)
        [attempt] = await r.store.attempts(task_id)
        assert (attempt.outcome.value, attempt.reason_code) == ("declined", "offer_expired")  # not now: may queue
        assert "expired before it was accepted" in attempt.detail
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()  # the provider has read the Cancel and closed the stream
        requester = r.requester.signer.peer_id
        assert p.provider.guard.open_count(requester) == 0
        assert p.provider.guard.lapses(requester, time.time()) == 0  # declined, not lapsed
        assert p.ledger.free().cpus == CPUS and p.host.started == []
