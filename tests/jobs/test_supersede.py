"""LeaseEnder: which superseded leases are still to end, and how each try ends (no dockerd).

The provider here is a ``ProviderNegotiation`` over the in-process pipe, or an
unreachable one; the store is real SQLite. The path where a real provider stops
a running container is tests/jobs/test_superseded.py (and, across processes,
tests/integration/test_faults_superseded.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from peerd.jobs.localpipe import PipeEnd, pipe_pair
from peerd.jobs.supersede import EnderSettings, LeaseEnder, OpenStream
from peerd.state.store import Attempt, AttemptOutcome, Store, TaskRecord, TaskRole
from protocol.codec import NEED_DATA, encode
from protocol.messages import JobSpec, Lease, LeaseTerms, RejectCode, Resume, TaskState
from protocol.negotiation import ProviderNegotiation
from protocol.signing import Signer, countersign, propose
from tests.waiting import eventually

SPEC = JobSpec(image="busybox", command=("true",), timeout=60)
FAST = EnderSettings(answer_timeout=2, io_timeout=2, first_retry=0.05, max_retry=0.1)


def cosigned_lease(task_id: str, requester: Signer, provider: Signer, expires_at: float) -> Lease:
    terms = LeaseTerms(task_id=task_id, requester=requester.peer_id, provider=provider.peer_id, spec=SPEC,
                       price=1.0, gpus=(), issued_at=expires_at - 100, expires_at=expires_at)
    return countersign(propose(terms, Lease, provider, as_provider=True), requester, as_provider=False)


async def add_task(store: Store, task_id: str, requester: Signer) -> None:
    now = time.time()
    await store.create_task(TaskRecord(task_id=task_id, role=TaskRole.REQUESTER, state=TaskState.PLACING, spec=SPEC,
                                       requester=requester.peer_id, created_at=now, updated_at=now))


def unreachable() -> OpenStream:
    @asynccontextmanager
    async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        raise OSError("unreachable")
        yield  # pragma: no cover

    return open_stream


def refusing(provider: Signer, requester: Signer) -> OpenStream:
    """A provider that no longer holds any lease: answers Resume with a signed Reject."""

    async def serve(end: PipeEnd) -> None:
        machine = ProviderNegotiation(provider, requester.peer_id)
        while (msg := machine.next_event()) is NEED_DATA:
            machine.receive_data(await end.read(65536))
        assert isinstance(msg, Resume)
        await end.write(machine.reject(RejectCode.UNKNOWN_TASK, "no such lease here"))
        await end.close()

    @asynccontextmanager
    async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
        ours, theirs = pipe_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, theirs)
            yield ours

    return open_stream


async def wait_superseded(store: Store, task_id: str) -> Attempt:
    async def superseded() -> list[Attempt]:  # another task writes it to SQLite, which fires no event
        return [a for a in await store.attempts(task_id) if a.outcome is AttemptOutcome.SUPERSEDED]

    return (await eventually(f"a superseded attempt of {task_id}", superseded, timeout=10))[0]


async def test_only_lost_leases_not_yet_superseded_are_pending(tmp_path: Path) -> None:
    requester, provider, other = Signer.generate(), Signer.generate(), Signer.generate()
    async with Store.open(tmp_path / "s.db") as store:
        await add_task(store, "t1", requester)
        lease = encode(cosigned_lease("t1", requester, provider, time.time() + 60))
        now = time.time()
        await store.add_attempt(Attempt("t1", 1, provider.peer_id, AttemptOutcome.LOST, now, None, "lost", None))
        assert await store.superseded_leases() == []  # a lost attempt without a lease is nothing to end
        await store.add_attempt(Attempt("t1", 2, provider.peer_id, AttemptOutcome.LOST, now, None, "lost", lease))
        assert [a.n for a in await store.superseded_leases()] == [2]
        await store.add_attempt(Attempt("t1", 3, other.peer_id, AttemptOutcome.SUPERSEDED, now, None, "other", None))
        assert [a.n for a in await store.superseded_leases()] == [2]  # another provider's entry ends nothing
        await store.add_attempt(Attempt("t1", 4, provider.peer_id, AttemptOutcome.SUPERSEDED, now, None, "ended", None))
        assert await store.superseded_leases() == []


async def test_a_provider_never_back_before_the_lease_expires_is_recorded_so(tmp_path: Path) -> None:
    requester, provider = Signer.generate(), Signer.generate()
    async with Store.open(tmp_path / "s.db") as store, trio.open_nursery() as nursery:
        await add_task(store, "t1", requester)
        ender = LeaseEnder(signer=requester, store=store, open_stream=unreachable(), settings=FAST)
        await nursery.start(ender.run)
        await ender.supersede("t1", provider.peer_id, cosigned_lease("t1", requester, provider, time.time() + 0.5),
                              "provider_lost: gone")
        ended = await wait_superseded(store, "t1")
        assert ended.provider == provider.peer_id and "expired" in ended.detail and ended.signed is None
        assert await store.superseded_leases() == []
        nursery.cancel_scope.cancel()


async def test_a_restarted_requester_ends_the_leases_it_had_not_ended(tmp_path: Path) -> None:
    requester, provider = Signer.generate(), Signer.generate()
    async with Store.open(tmp_path / "s.db") as store:
        await add_task(store, "t1", requester)
        lease = cosigned_lease("t1", requester, provider, time.time() + 60)
        # the first run recorded the lost lease, then stopped before it could reach the provider
        async with trio.open_nursery() as nursery:
            first = LeaseEnder(signer=requester, store=store, open_stream=unreachable(), settings=FAST)
            await nursery.start(first.run)
            await first.supersede("t1", provider.peer_id, lease, "provider_lost: gone")
            nursery.cancel_scope.cancel()
        assert [a.outcome for a in await store.superseded_leases()] == [AttemptOutcome.LOST]
        # after the restart the provider is back, and no longer holds the lease
        async with trio.open_nursery() as nursery:
            second = LeaseEnder(signer=requester, store=store, open_stream=refusing(provider, requester),
                                settings=FAST)
            await nursery.start(second.run)
            ended = await wait_superseded(store, "t1")
            nursery.cancel_scope.cancel()
        assert "no longer holds the lease (unknown_task" in ended.detail
        assert await store.superseded_leases() == []
