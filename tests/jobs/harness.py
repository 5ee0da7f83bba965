"""Requesters and providers wired over in-process pipes, with the scripted executor.

Everything but the transport and the container is real: negotiation,
signatures, SQLite stores, the capacity ledger, the job runner. ``Net`` routes
a requester's streams to the providers by peer id and can make a provider
unreachable or cut its open streams; each node runs in its own nursery,
so leaving its ``async with`` block crashes it and a new block on the same
store (and fake host) restarts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from peerd.executor.gpus import CapacityLedger
from peerd.executor.policy import ProviderPolicy
from peerd.host.nvml import FakeNvml
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.localpipe import PipeEnd, pipe_pair
from peerd.jobs.provider import Provider, ProviderSettings
from peerd.jobs.requester import Candidate, OpenStream, Requester, RequesterSettings
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import Store
from protocol.messages import JobSpec, LogChunk
from protocol.signing import Signer
from tests.fakes.executor import FakeExecutor, FakeHost, Script

CPUS = 2.0
FAST_PROVIDER = ProviderSettings(
    price_cpu_hour=0.01, price_gpu_hour=1.0, policy=ProviderPolicy(max_time_limit=600),
    keepalive=0.25, io_timeout=10,
)
FAST_REQUESTER = RequesterSettings(max_attempts=3, placement_deadline=30, provider_timeout=5, io_timeout=10)
HELD = "fake/held"  # on a fresh host: a job that writes "first" and runs until the test releases it


@dataclass
class ProviderNode:
    signer: Signer
    store: Store
    host: FakeHost
    executor: FakeExecutor
    ledger: CapacityLedger
    runner: JobRunner
    provider: Provider
    nursery: trio.Nursery

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id


@dataclass
class RequesterNode:
    requester: Requester
    store: Store

    @property
    def tracker(self) -> TaskTracker:
        return self.requester.tracker

    async def run(self, spec: JobSpec) -> str:
        task_id = await self.requester.submit(spec)
        with trio.fail_after(30):
            await self.tracker.wait_final(task_id)
        return task_id

    async def first_log(self, task_id: str) -> LogChunk:
        """Wait until the requester received the task's first log chunk."""
        with trio.fail_after(30):
            async for item in self.tracker.follow_logs(task_id, follow=True):
                assert isinstance(item, LogChunk)
                return item
        raise AssertionError("the task ended without output")


@dataclass
class Net:
    """Who the requester can reach: providers by peer id, in the order they are tried."""

    providers: dict[str, ProviderNode] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)  # peers that accept a stream and never answer
    claimed_peer: str | None = None  # the peer id providers see for the requester (None: the real one)
    open_ends: dict[str, list[PipeEnd]] = field(default_factory=dict)  # provider-side ends by peer

    def candidates(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        return [Candidate(peer, []) for peer in [*self.silent, *self.providers]]

    def opener(self, requester_peer: str) -> OpenStream:
        @asynccontextmanager
        async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
            if peer_id in self.down or (peer_id not in self.providers and peer_id not in self.silent):
                raise OSError(f"{peer_id[:16]} unreachable")
            ours, theirs = pipe_pair()
            if peer_id in self.silent:
                self.open_ends.setdefault(peer_id, []).append(theirs)
            else:
                node = self.providers[peer_id]
                self.open_ends.setdefault(peer_id, []).append(theirs)
                node.nursery.start_soon(node.provider.handle_stream, theirs, self.claimed_peer or requester_peer)
            try:
                yield ours
            finally:
                await ours.close()

        return open_stream

    async def cut(self, peer_id: str) -> None:
        """Break every open stream to ``peer_id`` (the provider's side closes)."""
        for end in self.open_ends.pop(peer_id, []):
            await end.close()


@asynccontextmanager
async def provider_node(
    tmp_path: Path, net: Net, *, signer: Signer | None = None, name: str = "p", host: FakeHost | None = None,
    settings: ProviderSettings = FAST_PROVIDER, gpus: int = 0, cpus: float = CPUS, gpu_runtime: bool = False,
) -> AsyncIterator[ProviderNode]:
    """A provider on its own store (``name``) and fake host, registered in ``net`` while it runs."""
    signer = signer or Signer.generate()
    if host is None:
        host = FakeHost()
        host.scripts[HELD] = Script(hold=True, output=(("stdout", b"first\n"),))
    async with Store.open(tmp_path / f"{name}.db") as store, trio.open_nursery() as nursery:
        executor = FakeExecutor(f"node-{name}", host, policy=settings.policy, gpu_runtime=gpu_runtime)
        await nursery.start(executor.run)
        ledger = CapacityLedger(cpus=cpus, memory=4 << 30, gpus=FakeNvml.identical(gpus).read())
        runner = JobRunner(signer=signer, executor=executor, ledger=ledger, store=store, pids=64, log_limit=1 << 20)
        await nursery.start(runner.run)
        provider = Provider(signer=signer, ledger=ledger, runner=runner, settings=settings)
        node = ProviderNode(signer, store, host, executor, ledger, runner, provider, nursery)
        net.providers[signer.peer_id] = node
        net.down.discard(signer.peer_id)
        try:
            yield node
        finally:  # a crash, as far as the requester can tell: the containers on the host run on
            net.down.add(signer.peer_id)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def requester_node(
    tmp_path: Path, net: Net, *, signer: Signer | None = None, settings: RequesterSettings = FAST_REQUESTER,
) -> AsyncIterator[RequesterNode]:
    signer = signer or Signer.generate()
    async with Store.open(tmp_path / "r.db") as store, trio.open_nursery() as nursery:
        requester = Requester(
            signer=signer, store=store, tracker=TaskTracker(), candidates=net.candidates,
            open_stream=net.opener(signer.peer_id), settings=settings,
        )
        await nursery.start(requester.run)
        try:
            yield RequesterNode(requester, store)
        finally:  # a crash: the store keeps what was written
            nursery.cancel_scope.cancel()


__all__ = ["FAST_PROVIDER", "FAST_REQUESTER", "HELD", "Net", "ProviderNode", "RequesterNode", "provider_node",
           "requester_node"]
