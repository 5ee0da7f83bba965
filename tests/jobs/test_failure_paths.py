"""The requester's and provider's failure paths, fast: in-process pipes and the scripted executor.

Refusals (each reason), offers left unanswered or accepted too late, providers
that fall silent, lose the stream, vanish or restart, requesters that restart,
cancels and jobs the executor fails. The same flows on a real dockerd are in
tests/jobs/test_task_flow.py and tests/integration.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from peerd.executor.errors import ExecutorError, Reason
from peerd.jobs.localpipe import pipe_pair
from peerd.jobs.provider import ProviderSettings
from peerd.state.store import AttemptOutcome
from protocol.codec import NEED_DATA
from protocol.messages import (
    JobSpec,
    LogChunk,
    Offer,
    ReceiptTerms,
    RejectCode,
    TaskState,
)
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer, verify_cosigned
from tests.fakes.executor import FakeHost, Script
from tests.jobs.harness import (
    CPUS,
    FAST_PROVIDER,
    FAST_REQUESTER,
    HELD,
    Net,
    ProviderNode,
    RequesterNode,
    provider_node,
    requester_node,
)

QUICK = JobSpec(image="fake/quick", command=("true",), timeout=60)
HOLD = JobSpec(image=HELD, command=("serve",), timeout=60)
SILENT = Signer.generate().peer_id  # a peer that takes the stream and never answers


async def settled(p: ProviderNode) -> None:
    """The provider released every resource (the runner's jobs end asynchronously after the receipt)."""
    with trio.fail_after(10):
        await p.host.wait_until(lambda: not p.runner.jobs and p.ledger.free().cpus == CPUS)


async def attempts_of(r: RequesterNode, task_id: str) -> list[tuple[str, str]]:
    return [(a.outcome.value, a.reason_code.value if a.reason_code else "") for a in await r.store.attempts(task_id)]


async def same_receipt(r: RequesterNode, p: ProviderNode, task_id: str) -> ReceiptTerms:
    mine, theirs = await r.store.get_receipt(task_id), await p.store.get_receipt(task_id)
    assert mine is not None and mine == theirs
    return verify_cosigned(mine, ReceiptTerms)


# ---------------------------------------------------------------- refusals
def _policy(**fields: object) -> Callable[[ProviderSettings], ProviderSettings]:
    return lambda s: dataclasses.replace(s, policy=dataclasses.replace(s.policy, **fields))  # type: ignore[arg-type]


REFUSALS: list[tuple[RejectCode, JobSpec, Callable[[ProviderSettings], ProviderSettings]]] = [
    (RejectCode.IMAGE_NOT_ALLOWED, QUICK, _policy(allowed_images=("allowed/*",))),
    (RejectCode.TIME_LIMIT_TOO_LONG, dataclasses.replace(QUICK, timeout=3600), _policy(max_time_limit=60)),
    (RejectCode.NETWORK_NOT_ALLOWED, dataclasses.replace(QUICK, network=True), lambda s: s),
    (RejectCode.NO_CAPACITY, dataclasses.replace(QUICK, cpus=CPUS * 2), lambda s: s),
    (RejectCode.NO_CAPACITY, dataclasses.replace(QUICK, cpus=1.5), _policy(max_cpus=1.0)),
    (RejectCode.NO_GPU_RUNTIME, dataclasses.replace(QUICK, gpus=1), lambda s: s),
    (RejectCode.NO_MATCHING_GPU, dataclasses.replace(QUICK, gpus=1, gpu_model="no such GPU"),
     lambda s: s),  # on a host with a GPU runtime (below)
    (RejectCode.NO_MATCHING_GPU, dataclasses.replace(QUICK, gpus=1, min_cuda="13.0"), lambda s: s),  # driver: 12.4
    (RejectCode.NO_MATCHING_GPU, dataclasses.replace(QUICK, gpus=1, min_compute_capability="10.0"), lambda s: s),
    (RejectCode.PRICE_TOO_LOW, dataclasses.replace(QUICK, max_price=0.001), lambda s: s),
    (RejectCode.BUSY, QUICK, lambda s: dataclasses.replace(s, max_concurrent=0)),
]


@pytest.mark.parametrize(("code", "spec", "configure"), REFUSALS, ids=[f"{c.value}-{i}" for i, (c, _, _) in
                                                                         enumerate(REFUSALS)])
async def test_each_refusal_reaches_the_requester_signed_and_nothing_runs(
    tmp_path: Path, code: RejectCode, spec: JobSpec, configure: Callable[[ProviderSettings], ProviderSettings]
) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=configure(FAST_PROVIDER), gpus=1,
                             gpu_runtime=code is RejectCode.NO_MATCHING_GPU) as p, \
            requester_node(tmp_path, net) as r:
        task_id = await r.run(spec)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED and code.value in record.detail
        attempts = await r.store.attempts(task_id)
        assert [(a.outcome, a.reason_code) for a in attempts] == [(AttemptOutcome.REJECTED, code)]
        assert attempts[0].signed  # the provider's signed Reject, kept as proof
        assert p.host.started == [] and p.ledger.free().cpus == CPUS and len(p.ledger.free().gpus) == 1


async def test_a_draining_provider_refuses_with_its_reason(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        p.provider.draining = True
        task_id = await r.run(QUICK)
        assert await attempts_of(r, task_id) == [("rejected", RejectCode.DRAINING.value)]
        assert p.host.started == []


async def test_a_request_signed_by_another_peer_than_the_streams_gets_no_answer(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        net.claimed_peer = Signer.generate().peer_id  # the provider sees the stream come from someone else
        task_id = await r.run(QUICK)
        assert await attempts_of(r, task_id) == [("unreachable", "")]  # the stream is closed unanswered
        assert p.host.started == [] and p.ledger.free().cpus == CPUS


# ---------------------------------------------------------------- offers
async def test_an_offer_left_unanswered_holds_nothing_and_counts_against_its_peer(tmp_path: Path) -> None:
    net = Net()
    settings = dataclasses.replace(FAST_PROVIDER, offer_hold=0.3)
    async with provider_node(tmp_path, net, settings=settings) as p:
        signer = Signer.generate()
        machine = RequesterNegotiation(signer, p.peer_id)
        ours, theirs = pipe_pair()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(p.provider.handle_stream, theirs, signer.peer_id)
                await ours.write(machine.send_request("t-silent", QUICK, now=time.time()))
                while (offer := machine.next_event()) is NEED_DATA:
                    machine.receive_data(await ours.read(65536))
                assert isinstance(offer, Offer)
                assert p.ledger.free().cpus == CPUS  # an offer is a quote: nothing is held for it
                # we never answer: the provider gives up when the offer expires and closes the stream
                while await ours.read(65536):
                    pass
        assert p.ledger.free().cpus == CPUS and p.host.started == []
        assert p.provider.guard.lapses(signer.peer_id, time.time()) > 0.9  # the lapse is the asker's


async def test_an_accept_after_the_offer_expired_is_refused(tmp_path: Path) -> None:
    net = Net()
    # the provider's wall clock moves 10 s on every reading: its 15 s offer has expired by the Accept
    steps = itertools.count(time.time(), 10.0)
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        p.provider.clock = lambda: next(steps)
        task_id = await r.run(QUICK)
        assert await attempts_of(r, task_id) == [("rejected", RejectCode.OFFER_EXPIRED.value)]
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        assert p.ledger.free().cpus == CPUS and p.host.started == []


async def test_a_provider_that_never_answers_times_out_and_the_next_one_runs_the_job(tmp_path: Path) -> None:
    net = Net(silent={SILENT})
    settings = dataclasses.replace(FAST_REQUESTER, provider_timeout=0.5)
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net, settings=settings) as r:
        task_id = await r.run(QUICK)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.SUCCEEDED
        assert await attempts_of(r, task_id) == [("timeout", ""), ("accepted", "")]
        await same_receipt(r, p, task_id)


async def test_cancel_while_placing_ends_the_task_cancelled(tmp_path: Path) -> None:
    net = Net(silent={SILENT})
    async with requester_node(tmp_path, net) as r:
        task_id = await r.requester.submit(QUICK)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()  # no store work on the way: placement awaits the peer
            assert list(net.open_ends) == [SILENT]
            assert await r.requester.cancel(task_id)
            await r.tracker.wait_final(task_id)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.CANCELLED
        assert "before placement" in record.detail


# ---------------------------------------------------------------- after the lease
async def test_cancel_stops_the_running_job_and_both_sides_sign_a_cancelled_receipt(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        task_id = await r.requester.submit(HOLD)
        await r.first_log(task_id)
        assert await r.requester.cancel(task_id)
        with trio.fail_after(10):
            await r.tracker.wait_final(task_id)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.CANCELLED
        assert (await same_receipt(r, p, task_id)).state is TaskState.CANCELLED
        await settled(p)
        assert not p.host.running(task_id)


async def test_a_stream_lost_mid_job_is_resumed_without_losing_or_repeating_output(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        task_id = await r.requester.submit(HOLD)
        assert (await r.first_log(task_id)).seq == 0
        await net.cut(p.peer_id)  # the stream dies; the provider's job runs on
        p.host.write(task_id, "stdout", b"second\n")
        p.host.release(task_id, exit_code=0)
        with trio.fail_after(30):
            await r.tracker.wait_final(task_id)
            logs = [item async for item in r.tracker.follow_logs(task_id, follow=False)]
        assert [(c.seq, c.data) for c in logs if isinstance(c, LogChunk)] == [(0, b"first\n"), (1, b"second\n")]
        assert len(logs) == 2  # no gap, no repeat
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.SUCCEEDED
        assert await attempts_of(r, task_id) == [("accepted", "")]  # a resume is not a new attempt
        result = await r.store.get_result(task_id)
        assert result is not None and result.result.stdout == b"first\nsecond\n"
        await same_receipt(r, p, task_id)
        await settled(p)


async def test_a_provider_lost_after_the_lease_is_given_up_and_the_job_placed_elsewhere(tmp_path: Path) -> None:
    net = Net()
    settings = dataclasses.replace(FAST_REQUESTER, provider_timeout=1.0)
    async with provider_node(tmp_path, net, name="a") as a, requester_node(tmp_path, net, settings=settings) as r:
        task_id = await r.requester.submit(HOLD)
        await r.first_log(task_id)
        async with provider_node(tmp_path, net, name="b", host=FakeHost()) as b:  # b's jobs end at once
            net.down.add(a.peer_id)
            await net.cut(a.peer_id)
            with trio.fail_after(30):
                await r.tracker.wait_final(task_id)
            record = await r.store.get_task(task_id)
            assert record is not None and record.state is TaskState.SUCCEEDED and record.provider == b.peer_id
            assert await attempts_of(r, task_id) == [("accepted", ""), ("lost", ""), ("accepted", "")]
            assert (await same_receipt(r, b, task_id)).provider == b.peer_id


async def test_a_restarted_requester_resumes_its_leased_job(tmp_path: Path) -> None:
    net = Net()
    signer = Signer.generate()
    async with provider_node(tmp_path, net) as p:
        async with requester_node(tmp_path, net, signer=signer) as r1:
            task_id = await r1.requester.submit(HOLD)
            await r1.first_log(task_id)
        # the requester crashed; the job runs on at the provider, which learns more output meanwhile
        p.host.write(task_id, "stdout", b"while away\n")
        async with requester_node(tmp_path, net, signer=signer) as r2:
            assert (await r2.first_log(task_id)).data == b"first\n"  # resumed from the start: a fresh tracker
            p.host.release(task_id, exit_code=4)
            with trio.fail_after(30):
                await r2.tracker.wait_final(task_id)
            record = await r2.store.get_task(task_id)
            assert record is not None and record.state is TaskState.FAILED and record.exit_code == 4
            result = await r2.store.get_result(task_id)
            assert result is not None and result.result.stdout == b"first\nwhile away\n"
            assert await attempts_of(r2, task_id) == [("accepted", "")]
            await same_receipt(r2, p, task_id)


async def test_a_provider_that_forgot_the_lease_is_asked_again_under_a_new_one(tmp_path: Path) -> None:
    net = Net()
    psigner, rsigner = Signer.generate(), Signer.generate()
    async with provider_node(tmp_path, net, signer=psigner, name="before") as p1:
        async with requester_node(tmp_path, net, signer=rsigner) as r1:
            task_id = await r1.requester.submit(HOLD)
            await r1.first_log(task_id)
        p1.host.release(task_id)
    # the same provider identity comes back with nothing of that lease (a new store and host)
    async with provider_node(tmp_path, net, signer=psigner, name="after", host=FakeHost()) as p2, \
            requester_node(tmp_path, net, signer=rsigner) as r2:
        with trio.fail_after(30):
            await r2.tracker.wait_final(task_id)
        record = await r2.store.get_task(task_id)
        assert record is not None and record.state is TaskState.SUCCEEDED
        assert await attempts_of(r2, task_id) == [
            ("accepted", ""), ("rejected", RejectCode.UNKNOWN_TASK.value), ("accepted", "")]
        assert p2.host.started == [task_id]
        await same_receipt(r2, p2, task_id)


# ---------------------------------------------------------------- the provider's own failures
async def test_a_job_the_executor_cannot_start_fails_with_its_reason(tmp_path: Path) -> None:
    net = Net()
    host = FakeHost()
    host.scripts["fake/missing"] = Script(refuse=ExecutorError(Reason.IMAGE_UNAVAILABLE, "pull failed"))
    async with provider_node(tmp_path, net, host=host) as p, requester_node(tmp_path, net) as r:
        task_id = await r.run(dataclasses.replace(QUICK, image="fake/missing"))
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.FAILED
        assert record.detail == "image_unavailable: pull failed"
        assert (await same_receipt(r, p, task_id)).state is TaskState.FAILED
        await settled(p)


async def test_a_container_that_vanishes_mid_job_ends_lost(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net) as p, requester_node(tmp_path, net) as r:
        task_id = await r.requester.submit(HOLD)
        await r.first_log(task_id)
        p.host.vanish(task_id)
        with trio.fail_after(10):
            await r.tracker.wait_final(task_id)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.LOST
        assert (await same_receipt(r, p, task_id)).state is TaskState.LOST
        await settled(p)


@pytest.mark.parametrize("container", ["runs on", "vanished"])
async def test_a_provider_restart_reattaches_or_settles_the_job_and_the_requester_resumes(
    tmp_path: Path, container: str
) -> None:
    net = Net()
    signer, host = Signer.generate(), FakeHost()
    host.scripts[HELD] = Script(hold=True, output=(("stdout", b"first\n"),))
    async with requester_node(tmp_path, net) as r:
        async with provider_node(tmp_path, net, signer=signer, host=host) as p1:
            task_id = await r.requester.submit(HOLD)
            await r.first_log(task_id)
        # the provider crashed; its container is still on the host (or is not)
        if container == "vanished":
            host.vanish(task_id)
        async with provider_node(tmp_path, net, signer=signer, host=host) as p2:
            if container == "runs on":
                assert p2.runner.knows(task_id)  # re-attached
                host.release(task_id, exit_code=0)
            with trio.fail_after(30):
                await r.tracker.wait_final(task_id)
            record = await r.store.get_task(task_id)
            expected = TaskState.SUCCEEDED if container == "runs on" else TaskState.LOST
            assert record is not None and record.state is expected
            assert (await same_receipt(r, p2, task_id)).state is expected
            await settled(p2)
        assert p1 is not p2


async def test_a_gpu_job_whose_image_needs_a_newer_cuda_is_refused_before_any_offer(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, gpus=1, gpu_runtime=True) as p, requester_node(tmp_path, net) as r:
        p.executor.image_cuda_versions["fake/quick"] = "13.0"  # its NVIDIA_REQUIRE_CUDA; the fake driver: 12.4
        task_id = await r.run(dataclasses.replace(QUICK, gpus=1))
        attempts = await r.store.attempts(task_id)
        assert [(a.outcome, a.reason_code) for a in attempts] == [(AttemptOutcome.REJECTED, RejectCode.NO_MATCHING_GPU)]
        assert "needs CUDA 13.0" in attempts[0].detail and "12.4" in attempts[0].detail
        assert p.host.started == [] and len(p.ledger.free().gpus) == 1
        p.executor.image_cuda_versions["fake/quick"] = "12.2"
        done = await r.run(dataclasses.replace(QUICK, gpus=1))
        record = await r.store.get_task(done)
        assert record is not None and record.state is TaskState.SUCCEEDED
