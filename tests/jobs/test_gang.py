"""Gang placement and runs, on the in-process harness: real negotiation, signatures, stores and ledgers;
the scripted executor (the real-node test is tests/integration/test_gang.py)."""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from peerd.executor.contract import PullListener, RunSpec
from peerd.executor.errors import ExecutorError, Reason
from peerd.jobs.provider import GangSettings
from protocol.messages import JobSpec, LeaseTerms, LogChunk, TaskState
from protocol.signing import verify_cosigned
from tests.fakes.executor import Script

from .harness import (
    FAST_PROVIDER,
    FAST_REQUESTER,
    HELD,
    Net,
    ProviderNode,
    RequesterNode,
    provider_node,
    requester_node,
)

pytestmark = pytest.mark.trio

GANG = dataclasses.replace(FAST_PROVIDER, gang=GangSettings(endpoint_host="127.0.0.1"))
ECHO = "fake/echo"


def gang_spec(image: str = ECHO, nodes: int = 2) -> JobSpec:
    return JobSpec(image=image, command=("env",), cpus=1.0, memory=64 << 20, timeout=60, nodes=nodes)


STARTED: dict[str, RunSpec] = {}  # every RunSpec a provider's executor was asked to start, by task id


def recording(node: ProviderNode) -> None:
    real = node.executor.start

    async def start(spec: RunSpec, *, on_pull: PullListener | None = None) -> None:
        STARTED[spec.task_id] = spec
        await real(spec, on_pull=on_pull)

    node.executor.start = start  # type: ignore[method-assign]


async def start(stack: AsyncExitStack, tmp_path: Path, net: Net, count: int,
                gang: tuple[bool, ...] | None = None) -> list[ProviderNode]:
    nodes = []
    for i in range(count):
        settings = GANG if (gang is None or gang[i]) else FAST_PROVIDER
        node = await stack.enter_async_context(provider_node(tmp_path, net, name=f"p{i}", settings=settings))
        node.host.scripts[ECHO] = Script(output=(("stdout", b"hello\nworld\n"),))
        recording(node)
        nodes.append(node)
    return nodes


async def rank_leases(req: RequesterNode, gang_id: str) -> list[LeaseTerms]:
    terms = []
    for _rank, task in await req.store.gang_ranks(gang_id):
        lease = await req.store.get_lease(task)
        assert lease is not None
        terms.append(verify_cosigned(lease, LeaseTerms))
    return terms


async def nothing_held(nodes: list[ProviderNode]) -> bool:
    """Once every job that started there was released (the runner discards after releasing)."""
    with trio.fail_after(30):
        for n in nodes:
            await n.host.wait_until(lambda n=n: set(n.host.started) <= set(n.host.discarded))  # type: ignore[misc]
    return all(not n.ledger.reservations() and not n.provider._gang_offers for n in nodes)


async def test_a_gang_runs_on_distinct_providers_and_every_lease_names_the_others(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        providers = await start(stack, tmp_path, net, 3)
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.run(gang_spec())
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.SUCCEEDED, record
        terms = await rank_leases(req, gang_id)
        assert [t.gang.rank for t in terms if t.gang] == [0, 1]
        assert len({t.provider for t in terms}) == 2
        for t in terms:
            assert t.gang is not None and t.gang.gang_id == gang_id and t.gang.size == 2
            assert {m.peer for m in t.roster} == {u.provider for u in terms}
        # the container of rank r got the overlay and the env contract from its lease
        for t in terms:
            assert t.gang is not None
            spec = STARTED[t.task_id]
            env = dict(spec.env)
            assert env["RANK"] == str(t.gang.rank) and env["WORLD_SIZE"] == "2"
            assert env["MASTER_ADDR"] == "10.99.0.1" and env["PEERD_NODE_IPS"] == "10.99.0.1,10.99.0.2"
            assert spec.overlay is not None and spec.overlay.address == f"10.99.0.{t.gang.rank + 1}/24"
            assert [p.public_key for p in spec.overlay.peers] == [
                m.public_key for m in t.roster if m.rank != t.gang.rank]
        # one receipt per rank, each from its own provider
        for t in terms:
            assert await req.store.get_receipt(t.task_id) is not None
        assert await nothing_held(providers)
        # the gang is one task in listings
        assert [r.task_id for r in await req.store.list_tasks()] == [gang_id]


async def test_logs_are_prefixed_by_rank(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        await start(stack, tmp_path, net, 2)
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.requester.submit(gang_spec())
        lines: list[bytes] = []
        with trio.fail_after(30):
            async for item in req.tracker.follow_logs(gang_id, follow=True):
                assert isinstance(item, LogChunk)
                lines += item.data.splitlines()
        assert sorted(lines) == [b"[rank 0] hello", b"[rank 0] world", b"[rank 1] hello", b"[rank 1] world"]


async def test_not_enough_providers_is_not_placed_with_each_reason_and_nothing_held(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        providers = await start(stack, tmp_path, net, 2, gang=(True, False))
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.run(gang_spec())
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        assert "gang_not_supported" in record.detail, record.detail
        attempts = await req.store.attempts(gang_id)
        assert any(a.reason_code and a.reason_code.value == "gang_not_supported" for a in attempts)
        assert await nothing_held(providers)
        assert not any(n.host.started for n in providers)


async def test_a_member_refusing_at_accept_is_replaced_and_the_others_released(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        providers = await start(stack, tmp_path, net, 3)
        first, second, third = providers
        # the second provider's capacity is gone by the time the accept comes: no_capacity at accept
        second.ledger.quote = lambda **kw: ()  # type: ignore[method-assign]  # quotes, but cannot take
        real_reserve = second.ledger.reserve

        def refuse(task_id: str, **kw: object) -> None:
            raise ExecutorError(Reason.NO_CAPACITY, "taken by someone else")

        second.ledger.reserve = refuse  # type: ignore[method-assign,assignment]
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.run(gang_spec())
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.SUCCEEDED, record.detail
        terms = await rank_leases(req, gang_id)
        assert {t.provider for t in terms} == {first.peer_id, third.peer_id}
        attempts = await req.store.attempts(gang_id)
        refused = [a for a in attempts if a.provider == second.peer_id]
        assert refused and refused[0].reason_code is not None and refused[0].reason_code.value == "no_capacity"
        # the first round's proposed lease on the first provider was cancelled: it started once only
        assert len(first.host.started) == 1
        second.ledger.reserve = real_reserve  # type: ignore[method-assign]
        assert await nothing_held(providers)


async def test_a_failed_rank_stops_the_gang_naming_it(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        providers = await start(stack, tmp_path, net, 2)
        for node in providers:
            node.host.scripts["fake/gang"] = Script(hold=True, output=(("stdout", b"up\n"),))
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.requester.submit(gang_spec("fake/gang"))
        with trio.fail_after(30):
            for node in providers:
                await node.host.wait_running()
        failing = providers[1]
        failing.host.release(failing.host.started[0], exit_code=3)
        with trio.fail_after(30):
            await req.tracker.wait_final(gang_id)
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.FAILED
        assert failing.peer_id in record.detail and "rank" in record.detail
        other = providers[0]
        with trio.fail_after(30):
            await other.host.wait_until(lambda: not other.host.running(other.host.started[0]))
        for _rank, task in await req.store.gang_ranks(gang_id):
            assert await req.store.get_receipt(task) is not None


async def test_a_lost_provider_stops_the_gang_naming_its_rank(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        survivor = await stack.enter_async_context(provider_node(tmp_path, net, name="a", settings=GANG))
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        async with provider_node(tmp_path, net, name="b", settings=GANG) as doomed:
            gang_id = await req.requester.submit(gang_spec(HELD))
            with trio.fail_after(30):
                await survivor.host.wait_running()
                await doomed.host.wait_running()
            await net.cut(doomed.peer_id)
        with trio.fail_after(30):
            await req.tracker.wait_final(gang_id)
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.FAILED, record
        assert doomed.peer_id in record.detail and "lost" in record.detail
        with trio.fail_after(30):
            await survivor.host.wait_until(lambda: not survivor.host.running(survivor.host.started[0]))
        ranks = dict(await req.store.gang_ranks(gang_id))
        receipts = [await req.store.get_receipt(t) for t in ranks.values()]
        assert sum(r is not None for r in receipts) == 1  # the survivor's; the lost one is ended when it is back
        assert await survivor.store.get_receipt(survivor.host.started[0]) is not None


async def test_cancel_stops_every_rank(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        providers = await start(stack, tmp_path, net, 2)
        req = await stack.enter_async_context(requester_node(tmp_path, net))
        gang_id = await req.requester.submit(gang_spec(HELD))
        with trio.fail_after(30):
            for node in providers:
                await node.host.wait_running()
        assert await req.requester.cancel(gang_id)
        with trio.fail_after(30):
            await req.tracker.wait_final(gang_id)
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.CANCELLED
        for node in providers:
            assert not node.host.running(node.host.started[0])


async def test_recovering_a_gang_ends_it(tmp_path: Path) -> None:
    net = Net()
    async with AsyncExitStack() as stack:
        await start(stack, tmp_path, net, 2)
        async with requester_node(tmp_path, net) as req:
            gang_id = await req.requester.submit(gang_spec(HELD))
            with trio.fail_after(30):
                async for event in req.tracker.follow_events(gang_id):
                    if event.state is TaskState.RUNNING:
                        break
        async with requester_node(tmp_path, net, settings=FAST_REQUESTER) as again:
            with trio.fail_after(30):
                await again.tracker.wait_final(gang_id)
            record = await again.store.get_task(gang_id)
            assert record is not None and record.state is TaskState.LOST


async def test_a_gang_that_cannot_be_placed_whole_waits_queued_holding_nothing_then_runs(tmp_path: Path) -> None:
    net = Net()
    one_slot = dataclasses.replace(GANG, max_concurrent=1)
    queueing = dataclasses.replace(FAST_REQUESTER, queue_timeout=600.0)
    async with AsyncExitStack() as stack:
        nodes = []
        for i in range(2):
            node = await stack.enter_async_context(provider_node(tmp_path, net, name=f"p{i}", settings=one_slot))
            node.host.scripts[ECHO] = Script(output=(("stdout", b"hello\n"),))
            nodes.append(node)
        req = await stack.enter_async_context(requester_node(tmp_path, net, settings=queueing))
        holder = await req.requester.submit(JobSpec(image=HELD, command=("hold",), cpus=1.0, timeout=60))
        await req.first_log(holder)  # one provider's only slot is taken
        gang_id = await req.requester.submit(gang_spec())
        with trio.fail_after(20):
            async for event in req.tracker.follow_events(gang_id):
                if event.state is TaskState.QUEUED:
                    break
        busy = next(n for n in nodes if holder in n.runner.jobs)
        idle = next(n for n in nodes if n is not busy)
        assert not idle.ledger.reservations() and not idle.provider._gang_offers  # the waiting gang holds nothing
        busy.host.release(holder)
        with trio.fail_after(30):
            await req.tracker.wait_final(gang_id)
        record = await req.store.get_task(gang_id)
        assert record is not None and record.state is TaskState.SUCCEEDED, record.detail
        assert {t.provider for t in await rank_leases(req, gang_id)} == {n.peer_id for n in nodes}
