"""A provider's fair share between requesters, end to end over the wire (in-process pipes, scripted executor).

The rule alone is in tests/jobs/test_fairshare.py. Here each requester speaks the negotiation itself (request,
accept, countersign), so what is checked is the provider's answer to each request. Also here: the job limit
(``max_concurrent``) holds at accept, when more offers than slots are accepted at once.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import trio

from peerd.jobs.localpipe import PipeEnd, pipe_pair
from protocol.codec import NEED_DATA
from protocol.messages import JobSpec, Lease, Offer, Reject, RejectCode
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer
from tests.jobs.harness import FAST_PROVIDER, HELD, Net, ProviderNode, provider_node

LIMIT = 4
SETTINGS = dataclasses.replace(FAST_PROVIDER, max_concurrent=LIMIT)
HOLD = JobSpec(image=HELD, command=("serve",), cpus=0.5, memory=256 << 20, timeout=60)  # job slots bind first
CPUS = 8.0


async def _next(machine: RequesterNegotiation, stream: PipeEnd) -> object:
    with trio.fail_after(10):
        while (event := machine.next_event()) is NEED_DATA:
            machine.receive_data(await stream.read(65536))
    return event


async def request(
    p: ProviderNode, signer: Signer, task_id: str, spec: JobSpec = HOLD
) -> tuple[object, RequesterNegotiation, PipeEnd]:
    """Send a request to ``p`` as ``signer``: the provider's first answer, the negotiation and its open stream."""
    machine = RequesterNegotiation(signer, p.peer_id)
    ours, theirs = pipe_pair()
    p.nursery.start_soon(p.provider.handle_stream, theirs, signer.peer_id)
    await ours.write(machine.send_request(task_id, spec, now=time.time()))
    return await _next(machine, ours), machine, ours


async def ask(p: ProviderNode, signer: Signer, task_id: str, spec: JobSpec = HOLD) -> Reject | None:
    """Ask ``p`` to run a held job as ``signer``: its Reject, or None once the job runs there."""
    answer, machine, ours = await request(p, signer, task_id, spec)
    try:
        if isinstance(answer, Reject):
            return answer
        return await lease(p, machine, ours, task_id)
    finally:
        await ours.close()  # the job runs on without its stream


async def lease(p: ProviderNode, machine: RequesterNegotiation, ours: PipeEnd, task_id: str) -> Reject | None:
    """Accept the offer ``machine`` got and countersign the lease: the Reject, or None once the job runs."""
    assert isinstance(machine.offer, Offer)
    await ours.write(machine.accept(now=time.time()))
    proposed = await _next(machine, ours)
    if isinstance(proposed, Reject):
        return proposed
    assert isinstance(proposed, Lease)
    await ours.write(machine.countersign_lease())
    with trio.fail_after(10):
        await p.host.wait_until(lambda: p.host.running(task_id))
    return None


async def end(p: ProviderNode, task_id: str) -> None:
    """A held job exits and its slot is free."""
    p.host.release(task_id, 0)
    with trio.fail_after(10):
        await p.host.wait_until(lambda: task_id not in p.runner.jobs)


async def test_a_burst_from_one_requester_leaves_the_next_slot_to_the_one_turned_away(tmp_path: Path) -> None:
    a, b = Signer.generate(), Signer.generate()
    async with provider_node(tmp_path, Net(), settings=SETTINGS, cpus=CPUS) as p:
        for n in range(LIMIT):
            assert await ask(p, a, f"a-{n}") is None
        refused = await ask(p, b, "b-0")  # the provider is full: b is turned away, and waits
        assert refused is not None and refused.code is RejectCode.BUSY and "the limit here" in refused.detail
        assert p.provider.fair.depth(time.time()) == 1  # what the advert shows as queue_depth
        await end(p, "a-0")
        # a slot is free, but a already runs 3 of 4 while b waits: a's next request is refused ...
        second = await ask(p, a, "a-4")
        assert second is not None and second.code is RejectCode.BUSY
        assert second.detail.startswith("fair share: this requester runs 3 of the 4 job slots here")
        assert second.detail.endswith("while 1 other requester(s) wait")
        # ... and b's gets the slot; b no longer waits
        assert await ask(p, b, "b-1") is None
        assert sorted(job.terms.requester == b.peer_id for job in p.runner.jobs.values()) == [False] * 3 + [True]
        assert p.provider.fair.depth(time.time()) == 0
        # with nobody waiting, a takes the next free slot again (work-conserving)
        await end(p, "a-1")
        assert await ask(p, a, "a-5") is None


async def test_with_one_requester_the_fair_share_changes_nothing(tmp_path: Path) -> None:
    a = Signer.generate()
    async with provider_node(tmp_path, Net(), settings=SETTINGS, cpus=CPUS) as p:
        for n in range(LIMIT):
            assert await ask(p, a, f"a-{n}") is None
        refused = await ask(p, a, "a-4")  # full: a itself is turned away, and waits for nobody else
        assert refused is not None and refused.code is RejectCode.BUSY and "the limit here" in refused.detail
        await end(p, "a-0")
        assert await ask(p, a, "a-5") is None  # every slot is a's
        assert len(p.runner.jobs) == LIMIT


async def test_a_request_that_never_fits_here_does_not_make_its_requester_wait(tmp_path: Path) -> None:
    a, b = Signer.generate(), Signer.generate()
    async with provider_node(tmp_path, Net(), settings=SETTINGS, cpus=CPUS) as p:
        for n in range(LIMIT - 1):
            assert await ask(p, a, f"a-{n}") is None
        refused = await ask(p, b, "b-huge", dataclasses.replace(HOLD, cpus=CPUS * 2))
        assert refused is not None and refused.code is RejectCode.NO_CAPACITY
        assert p.provider.fair.depth(time.time()) == 0  # more than this host has: waiting here is pointless
        assert await ask(p, a, "a-3") is None


async def test_an_offer_accepted_after_another_requester_was_turned_away_is_refused_at_accept(
    tmp_path: Path
) -> None:
    a, b = Signer.generate(), Signer.generate()
    big = dataclasses.replace(HOLD, cpus=2.0)  # the CPUs bind here: 3 of a's jobs hold 6 of 8
    async with provider_node(tmp_path, Net(), settings=SETTINGS, cpus=CPUS) as p:
        for n in range(3):
            assert await ask(p, a, f"a-{n}", big) is None
        offer, machine, stream = await request(p, a, "a-3", big)  # nobody waits yet: a is offered the rest
        assert isinstance(offer, Offer)
        refused = await ask(p, b, "b-0", dataclasses.replace(HOLD, cpus=4.0))  # 2 CPUs free: b waits
        assert refused is not None and refused.code is RejectCode.NO_CAPACITY
        late = await lease(p, machine, stream, "a-3")  # a holds 75 % of the CPUs, b none: the slot is b's
        await stream.close()
        assert late is not None and late.code is RejectCode.BUSY and late.detail.startswith("fair share")
        assert "75% of this provider, its share 50%" in late.detail
        assert p.ledger.free().cpus == CPUS - 6.0  # a's accept took nothing


async def test_the_job_limit_holds_when_more_offers_than_slots_are_accepted(tmp_path: Path) -> None:
    async with provider_node(tmp_path, Net(), settings=SETTINGS, cpus=CPUS) as p:
        opened = [(n, *await request(p, Signer.generate(), f"x-{n}")) for n in range(LIMIT + 2)]
        assert all(isinstance(offer, Offer) for _, offer, _, _ in opened)  # offers are quotes: all are made
        answers = [await lease(p, machine, stream, f"x-{n}") for n, _, machine, stream in opened]
        assert answers[:LIMIT] == [None] * LIMIT
        assert [(a.code, a.detail) for a in answers[LIMIT:] if a is not None] == [
            (RejectCode.BUSY, f"{LIMIT} jobs running or starting, the limit here")] * 2
        assert len(p.runner.jobs) == LIMIT
        assert p.provider.fair.depth(time.time()) == 2  # both turned away for capacity: they wait
