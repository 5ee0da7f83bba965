"""A task no provider has room for waits (``queued``, holding nothing) and is placed once one has.

Real negotiation, signatures, stores and job runner over in-process pipes; the container is scripted.
Each test holds the provider's only slot with a ``HELD`` job and releases it when it wants room to free.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import trio
import trio.testing

from peerd.jobs.queue import QueueTerms
from peerd.jobs.requester import RequesterSettings
from protocol.messages import JobSpec, TaskState
from tests.jobs.harness import FAST_PROVIDER, FAST_REQUESTER, HELD, Net, RequesterNode, provider_node, requester_node

ONE_SLOT = dataclasses.replace(FAST_PROVIDER, max_concurrent=1)
QUEUEING = dataclasses.replace(FAST_REQUESTER, queue_timeout=600.0)
HOLD = JobSpec(image=HELD, command=("hold",), cpus=0.5, timeout=60)
QUICK = JobSpec(image="fake/quick", command=("true",), cpus=0.5, timeout=60)


async def _state(r: RequesterNode, task_id: str) -> TaskState:
    record = await r.store.get_task(task_id)
    assert record is not None
    return record.state


async def _until(r: RequesterNode, task_id: str, state: TaskState) -> None:
    """Follow the task's events until it reaches ``state`` (bounded)."""
    with trio.fail_after(20):
        async for event in r.tracker.follow_events(task_id):
            if event.state is state:
                return
    raise AssertionError(f"{task_id} ended without reaching {state}")


async def test_a_task_refused_busy_is_queued_then_placed_when_the_slot_frees(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p, \
            requester_node(tmp_path, net, settings=QUEUEING) as r:
        holder = await r.requester.submit(HOLD)
        await r.first_log(holder)
        waiting = await r.requester.submit(QUICK)
        await _until(r, waiting, TaskState.QUEUED)
        record = await r.store.get_task(waiting)
        assert record is not None and "busy" in record.detail, record.detail
        assert r.requester.queue.position(waiting) == 1
        assert set(p.runner.jobs) == {holder}  # nothing is held for the queued task
        p.host.release(holder)
        with trio.fail_after(20):
            await r.tracker.wait_final(waiting)
        assert await _state(r, waiting) is TaskState.SUCCEEDED
        assert await _state(r, holder) is TaskState.SUCCEEDED


async def test_queued_tasks_are_placed_in_submission_order_priority_first(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p, \
            requester_node(tmp_path, net, settings=QUEUEING) as r:
        holder = await r.requester.submit(HOLD)
        await r.first_log(holder)
        later = r.requester.queue_terms()
        first, second = [await r.requester.submit(HOLD, queue=later) for _ in range(2)]
        urgent = await r.requester.submit(HOLD, queue=QueueTerms(priority=5, deadline=later.deadline))
        for task_id in (first, second, urgent):
            await _until(r, task_id, TaskState.QUEUED)
        assert [r.requester.queue.position(t) for t in (urgent, first, second)] == [1, 2, 3]
        send, leased = trio.open_memory_channel[str](3)
        order: list[str] = []
        async with trio.open_nursery() as nursery:
            for task_id in (first, second, urgent):
                nursery.start_soon(_report_running, r, task_id, send)
            running = holder
            for _ in range(3):
                p.host.release(running)
                with trio.fail_after(20):
                    running = await leased.receive()
                order.append(running)
                await r.first_log(running)  # its container runs: it can be released
            p.host.release(running)
        assert order == [urgent, first, second], (order, urgent, first, second)


async def _report_running(r: RequesterNode, task_id: str, send: trio.MemorySendChannel[str]) -> None:
    await _until(r, task_id, TaskState.RUNNING)
    await send.send(task_id)


async def test_a_job_nobody_could_ever_run_is_not_placed_at_once(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=ONE_SLOT), requester_node(tmp_path, net, settings=QUEUEING) as r:
        eight_gpus = dataclasses.replace(QUICK, gpus=8)
        task_id = await r.requester.submit(eight_gpus)
        with trio.fail_after(5):
            await r.tracker.wait_final(task_id)
        record = await r.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        assert "no_matching_gpu" in record.detail or "no_gpu_runtime" in record.detail, record.detail


async def test_a_cancelled_queued_task_never_runs(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p, \
            requester_node(tmp_path, net, settings=QUEUEING) as r:
        holder = await r.requester.submit(HOLD)
        await r.first_log(holder)
        waiting = await r.requester.submit(QUICK)
        await _until(r, waiting, TaskState.QUEUED)
        assert await r.requester.cancel(waiting)
        with trio.fail_after(10):
            await r.tracker.wait_final(waiting)
        assert await _state(r, waiting) is TaskState.CANCELLED
        p.host.release(holder)
        with trio.fail_after(10):
            await r.tracker.wait_final(holder)
        assert await p.store.get_task(waiting) is None  # the provider never leased it
        assert r.requester.queue.position(waiting) is None


async def test_a_queued_task_survives_a_requester_restart_and_is_then_placed(tmp_path: Path) -> None:
    net = Net()
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p:
        async with requester_node(tmp_path, net, settings=QUEUEING) as r:
            holder = await r.requester.submit(HOLD)
            await r.first_log(holder)
            waiting = await r.requester.submit(QUICK)
            await _until(r, waiting, TaskState.QUEUED)
        # the requester is gone (a crash); the store keeps the queued task and its terms
        async with requester_node(tmp_path, net, settings=QUEUEING) as r:
            assert await _state(r, waiting) is TaskState.QUEUED
            p.host.release(holder)
            with trio.fail_after(20):
                await r.tracker.wait_final(waiting)
            assert await _state(r, waiting) is TaskState.SUCCEEDED


async def test_a_queued_task_ends_not_placed_when_its_queue_timeout_passes(tmp_path: Path) -> None:
    net = Net()
    short = dataclasses.replace(QUEUEING, queue_timeout=0.5)
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p, requester_node(tmp_path, net, settings=short) as r:
        holder = await r.requester.submit(HOLD)
        await r.first_log(holder)
        began = time.monotonic()
        waiting = await r.requester.submit(QUICK)
        with trio.fail_after(10):
            await r.tracker.wait_final(waiting)
        record = await r.store.get_task(waiting)
        assert record is not None and record.state is TaskState.NOT_PLACED
        assert "within its queue timeout" in record.detail and "busy" in record.detail, record.detail
        assert time.monotonic() - began < 5
        p.host.release(holder)


async def test_without_a_queue_timeout_a_busy_provider_means_not_placed(tmp_path: Path) -> None:
    net = Net()
    no_queue = RequesterSettings(**{**dataclasses.asdict(FAST_REQUESTER), "queue_timeout": 0.0})
    async with provider_node(tmp_path, net, settings=ONE_SLOT) as p, \
            requester_node(tmp_path, net, settings=no_queue) as r:
        holder = await r.requester.submit(HOLD)
        await r.first_log(holder)
        task_id = await r.run(QUICK)
        assert await _state(r, task_id) is TaskState.NOT_PLACED
        p.host.release(holder)
