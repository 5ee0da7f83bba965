"""A provider unreachable past ``provider_timeout``: the task moves on and the old lease ends.

Two real providers (executor, runner, store, dockerd) and a real requester in
one process, joined by the in-process pipe. Provider A "drops off the network"
(its streams are closed and it cannot be dialled) while its job runs on; the
requester re-places the task on B. When A is reachable again the requester
tells it the lease was superseded: A stops and removes the container, and both
sides hold the co-signed receipt for the time it actually ran. The network
variant, with a real SIGKILL and restart, is tests/integration/test_faults_superseded.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from peerd.executor.docker import DockerExecutor
from peerd.executor.gpus import CapacityLedger
from peerd.executor.plan import LABEL_NODE
from peerd.executor.policy import ProviderPolicy
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.localpipe import PipeEnd, pipe_pair
from peerd.jobs.provider import Provider, ProviderSettings
from peerd.jobs.requester import Candidate, Requester, RequesterSettings
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import AttemptOutcome, Store
from protocol.codec import decode_as
from protocol.messages import JobSpec, Receipt, ReceiptTerms, TaskState
from protocol.signing import Signer, verify_cosigned
from tests.waiting import eventually

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")


@dataclass
class Host:
    """One provider, and whether the requester can reach it."""

    signer: Signer
    provider: Provider
    store: Store
    up: bool = True
    streams: list[PipeEnd] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    async def drop(self) -> None:
        """Off the network: every open stream breaks and dials fail (the job runs on)."""
        self.up = False
        for end in self.streams:
            await end.close()


async def provider_host(store: Store, tmp_path: Path, name: str, nursery: trio.Nursery) -> Host:
    signer = Signer.generate()
    policy = ProviderPolicy(allowed_images=("*",), max_time_limit=120)
    executor = DockerExecutor(signer.peer_id, tmp_path / f"{name}-work", policy=policy, stop_grace=1)
    await nursery.start(executor.run)
    ledger = CapacityLedger(cpus=2.0, memory=2 << 30, gpus=[])
    runner = JobRunner(signer=signer, executor=executor, ledger=ledger, store=store, pids=64, log_limit=1 << 20)
    await nursery.start(runner.run)
    provider = Provider(signer=signer, ledger=ledger, runner=runner, settings=ProviderSettings(
        price_cpu_hour=0.01, price_gpu_hour=1.0, policy=policy, keepalive=1.0, io_timeout=10))
    return Host(signer, provider, store)


def containers_of(node_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_NODE}={node_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


async def containers_on(host: Host) -> list[str]:
    """The host's containers, running or not (dockerd's state: nothing to wait on but a query)."""
    return await trio.to_thread.run_sync(containers_of, host.peer_id)


def requester_over_pipes(signer: Signer, store: Store, hosts: dict[str, Host]) -> Requester:
    """A requester that reaches each host through the in-process pipe while it is up; A first, then B."""

    @asynccontextmanager
    async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        host = hosts[peer_id]
        if not host.up:
            raise OSError(f"{peer_id[:16]} is unreachable")
        ours, theirs = pipe_pair()
        host.streams.append(ours)
        async with trio.open_nursery() as inner:
            inner.start_soon(host.provider.handle_stream, theirs, signer.peer_id)
            try:
                yield ours
            finally:
                await ours.close()

    return Requester(
        signer=signer, store=store, tracker=TaskTracker(),
        candidates=lambda spec, now, local: [Candidate(peer_id, []) for peer_id in hosts],
        open_stream=open_stream,
        settings=RequesterSettings(max_attempts=3, placement_deadline=30, provider_timeout=1.5, io_timeout=5),
    )


async def move_from_a_to_b(requester: Requester, a: Host, b: Host) -> str:
    """A job starts on A, A drops off, the requester leases it on B; A comes back. The task id."""
    # long enough that A, which started first, cannot finish before it is told
    task_id = await requester.submit(JobSpec(image=IMAGE, command=("sh", "-c", "sleep 8; echo done"), timeout=60))
    await eventually("the job to run on A", lambda: containers_on(a), timeout=30)
    await a.drop()
    with trio.fail_after(30):
        async for event in requester.tracker.follow_events(task_id):
            if event.detail.startswith(f"leased on {b.peer_id[:16]}"):
                break
    assert await containers_on(a), "A's container runs on while A is unreachable"
    a.up = True
    return task_id


async def assert_b_ran_it(requester: Requester, task_id: str, b: Host) -> None:
    with trio.fail_after(40):
        await requester.tracker.wait_final(task_id)
    record = await requester.store.get_task(task_id)
    result = await requester.store.get_result(task_id)
    assert record is not None and record.state is TaskState.SUCCEEDED and record.provider == b.peer_id
    assert result is not None and result.result.stdout == b"done\n"


async def superseded_receipt(store: Store, task_id: str, a: Host) -> Receipt:
    """The requester's record of ending A's lease: one lost and one superseded attempt, and A's receipt."""

    async def superseded() -> bool:
        return any(x.outcome is AttemptOutcome.SUPERSEDED for x in await store.attempts(task_id))

    await eventually("the requester to record the superseded lease", superseded, timeout=20)
    attempts = await store.attempts(task_id)
    lost = [x for x in attempts if x.outcome is AttemptOutcome.LOST]
    ended = [x for x in attempts if x.outcome is AttemptOutcome.SUPERSEDED]
    assert [x.provider for x in lost] == [a.peer_id] and lost[0].signed, attempts
    assert [x.provider for x in ended] == [a.peer_id], attempts
    assert ended[0].detail.startswith("stopped on the provider: cancelled"), ended[0].detail
    assert ended[0].signed is not None
    receipt = decode_as(ended[0].signed, Receipt)
    assert isinstance(receipt, Receipt)
    terms = verify_cosigned(receipt, ReceiptTerms)  # signed by both
    assert terms.provider == a.peer_id and terms.state is TaskState.CANCELLED
    assert 0 < terms.wall_time < 8 and terms.cost > 0  # the time it actually ran, not the whole job
    assert await store.superseded_leases() == []
    return receipt


async def assert_a_ended_it(a: Host, task_id: str, receipt: Receipt) -> None:
    """A's own record says what happened, holds the same receipt, and no container is left."""
    a_record = await a.store.get_task(task_id)
    assert a_record is not None and a_record.state is TaskState.CANCELLED
    assert "superseded" in a_record.detail, a_record.detail
    a_result = await a.store.get_result(task_id)
    assert a_result is not None and b"done" not in a_result.result.stdout

    async def a_holds_the_receipt() -> bool:
        return await a.store.get_receipt(task_id) == receipt

    async def no_container_on_a() -> bool:
        return not await containers_on(a)

    await eventually("A to hold the co-signed receipt", a_holds_the_receipt, timeout=10)
    await eventually("A's container to be removed", no_container_on_a, timeout=20)
    assert not a.provider.runner.jobs and a.provider.ledger.free().cpus == 2.0


async def test_a_lease_moved_to_another_provider_is_ended_on_the_first_one(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "r.db") as rstore, Store.open(tmp_path / "a.db") as astore, \
            Store.open(tmp_path / "b.db") as bstore, trio.open_nursery() as nursery:
        a = await provider_host(astore, tmp_path, "a", nursery)
        b = await provider_host(bstore, tmp_path, "b", nursery)
        requester = requester_over_pipes(Signer.generate(), rstore, {a.peer_id: a, b.peer_id: b})
        await nursery.start(requester.run)
        task_id = await move_from_a_to_b(requester, a, b)
        await assert_b_ran_it(requester, task_id, b)
        receipt = await superseded_receipt(rstore, task_id, a)
        await assert_a_ended_it(a, task_id, receipt)
        nursery.cancel_scope.cancel()
