"""Provider and requester end to end over an in-process pipe, on a real dockerd.

The transport is the in-memory pipe ``--local`` uses; the negotiation,
signatures, store, executor and container are real. The network variant of
these tests lives in tests/integration.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from peerd.executor.docker import DockerExecutor
from peerd.executor.gpuaccess import GpuAccess, GpuSupport
from peerd.executor.gpus import CapacityLedger
from peerd.executor.policy import ProviderPolicy
from peerd.host.nvml import FakeNvml
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.localpipe import PipeEnd, pipe_pair
from peerd.jobs.provider import Provider, ProviderSettings
from peerd.jobs.requester import Candidate, Requester, RequesterSettings
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import Store
from protocol.codec import NEED_DATA, frame
from protocol.messages import (
    Accept,
    JobSpec,
    Lease,
    LeaseTerms,
    Offer,
    ReceiptTerms,
    Reject,
    RejectCode,
    TaskState,
)
from protocol.negotiation import RequesterNegotiation
from protocol.signing import Signer, seal_bytes, verify_cosigned

pytestmark = pytest.mark.docker  # needs a real dockerd

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")


class Pair:
    def __init__(self, requester: Requester, provider: Provider, store: Store, pstore: Store,
                 nursery: trio.Nursery) -> None:
        self.requester, self.provider, self.store, self.pstore = requester, provider, store, pstore
        self.nursery = nursery

    async def run(self, spec: JobSpec) -> str:
        task_id = await self.requester.submit(spec)
        with trio.fail_after(60):
            await self.requester.tracker.wait_final(task_id)
        return task_id


@asynccontextmanager
async def task_pair(
    tmp_path: Path, *, cpus: float = 2.0, images: tuple[str, ...] = ("*",), gpus: int = 0
) -> AsyncIterator[Pair]:
    psigner, rsigner = Signer.generate(), Signer.generate()
    async with Store.open(tmp_path / "p.db") as pstore, Store.open(tmp_path / "r.db") as rstore:
        async with trio.open_nursery() as nursery:
            policy = ProviderPolicy(allowed_images=images, max_time_limit=120)
            executor = DockerExecutor(psigner.peer_id, tmp_path / "work", policy=policy, stop_grace=1)
            await nursery.start(executor.run)
            if gpus:  # pretend this dockerd takes --gpus requests: the quotes are what is tested, nothing starts
                executor.gpu_support = GpuSupport(GpuAccess.HOOK, "pretended")
            # GPUs: an honest fake inventory at the NVML boundary (this host has none)
            ledger = CapacityLedger(cpus=cpus, memory=2 << 30, gpus=FakeNvml.identical(gpus).read())
            runner = JobRunner(
                signer=psigner, executor=executor, ledger=ledger, store=pstore, pids=64, log_limit=1 << 20
            )
            await nursery.start(runner.run)
            provider = Provider(
                signer=psigner, ledger=ledger, runner=runner,
                settings=ProviderSettings(price_cpu_hour=0.01, price_gpu_hour=1.0, policy=policy,
                                          keepalive=1.0, io_timeout=10,
                                          offers_per_peer=2),  # the squatter test's bound
            )

            @asynccontextmanager
            async def open_stream(peer_id: str, addrs: list[str]) -> AsyncIterator[PipeEnd]:
                ours, theirs = pipe_pair()
                async with trio.open_nursery() as inner:
                    inner.start_soon(provider.handle_stream, theirs, rsigner.peer_id)
                    try:
                        yield ours
                    finally:
                        await ours.close()

            requester = Requester(
                signer=rsigner, store=rstore, tracker=TaskTracker(),
                candidates=lambda spec, now, local: [Candidate(psigner.peer_id, [])],
                open_stream=open_stream,
                settings=RequesterSettings(max_attempts=2, placement_deadline=20, provider_timeout=10, io_timeout=10),
            )
            await nursery.start(requester.run)
            yield Pair(requester, provider, rstore, pstore, nursery)
            nursery.cancel_scope.cancel()


async def test_job_runs_and_both_sides_hold_the_same_cosigned_receipt(tmp_path: Path) -> None:
    async with task_pair(tmp_path) as pair:
        spec = JobSpec(image=IMAGE, command=("sh", "-c", "echo hello; echo oops >&2; exit 3"), timeout=30)
        task_id = await pair.run(spec)
        record = await pair.store.get_task(task_id)
        assert record is not None and record.state is TaskState.FAILED and record.exit_code == 3
        result = await pair.store.get_result(task_id)
        assert result is not None and result.result.stdout == b"hello\n" and result.result.stderr == b"oops\n"
        mine, theirs = await pair.store.get_receipt(task_id), await pair.pstore.get_receipt(task_id)
        assert mine is not None and mine == theirs
        terms = verify_cosigned(mine, ReceiptTerms)
        assert terms.exit_code == 3 and terms.provider == pair.provider.peer_id
        lease = await pair.store.get_lease(task_id)
        assert lease is not None and verify_cosigned(lease, LeaseTerms).task_id == task_id
        assert pair.provider.ledger.free().cpus == 2.0


async def test_refused_job_is_not_placed_with_the_signed_reason(tmp_path: Path) -> None:
    async with task_pair(tmp_path, images=("allowed/*",)) as pair:
        task_id = await pair.run(JobSpec(image=IMAGE, command=("true",)))
        record = await pair.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        attempts = await pair.store.attempts(task_id)
        assert attempts and attempts[0].reason_code is RejectCode.IMAGE_NOT_ALLOWED
        assert attempts[0].signed  # the provider's signed reject, kept as proof
        assert "image_not_allowed" in record.detail or "matches none" in record.detail


async def test_cancel_stops_a_running_job(tmp_path: Path) -> None:
    async with task_pair(tmp_path) as pair:
        task_id = await pair.requester.submit(JobSpec(image=IMAGE, command=("sleep", "60"), timeout=90))
        with trio.fail_after(30):
            async for event in pair.requester.tracker.follow_events(task_id):
                if event.state is TaskState.RUNNING and "leased" in event.detail:
                    break
            assert await pair.requester.cancel(task_id)
            await pair.requester.tracker.wait_final(task_id)
        record = await pair.store.get_task(task_id)
        assert record is not None and record.state is TaskState.CANCELLED
        assert pair.provider.ledger.free().cpus == 2.0


async def _exchange(pair: Pair, data: bytes, signer: Signer) -> bytes:
    """Send raw bytes to the provider as ``signer`` and return all it answered."""
    ours, theirs = pipe_pair()
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.provider.handle_stream, theirs, signer.peer_id)
        await ours.write(data)
        with trio.fail_after(15):
            while chunk := await ours.read(65536):
                received += chunk
    return received


async def test_a_task_id_seen_before_is_refused_with_a_signed_reason(tmp_path: Path) -> None:
    async with task_pair(tmp_path) as pair:
        first = await pair.run(JobSpec(image=IMAGE, command=("true",), timeout=30))
        signer = pair.requester.signer
        machine = RequesterNegotiation(signer, pair.provider.peer_id)
        request = machine.send_request(first, JobSpec(image=IMAGE, command=("true",)), now=1.0)
        answer = await _exchange(pair, request, signer)
        machine.receive_data(answer)
        reply = machine.next_event()
        assert isinstance(reply, Reject) and reply.code is RejectCode.BAD_REQUEST


async def test_garbage_and_illegal_orders_close_only_that_stream(tmp_path: Path) -> None:
    async with task_pair(tmp_path) as pair:
        stranger = Signer.generate()
        assert await _exchange(pair, b"\xff" * 1000, stranger) == b""  # not a frame: closed, nothing sent
        assert await _exchange(pair, (1 << 31).to_bytes(4, "big"), stranger) == b""  # oversize frame header
        # a well-formed, signed message that is illegal first: an Accept before any request
        illegal = frame(seal_bytes(Accept(task_id="tx", price=0.0), stranger))
        assert await _exchange(pair, illegal, stranger) == b""
        # the provider still serves others
        task_id = await pair.run(JobSpec(image=IMAGE, command=("echo", "still here"), timeout=30))
        result = await pair.store.get_result(task_id)
        assert result is not None and result.result.stdout == b"still here\n"


async def _offer_for(
    pair: Pair, spec: JobSpec, task_id: str, signer: Signer | None = None
) -> tuple[trio.Event, object, PipeEnd, RequesterNegotiation]:
    """Open a negotiation as ``signer`` (the pair's requester by default) and read the
    provider's first answer; the stream stays open. The event fires once the provider is done."""
    signer = signer or pair.requester.signer
    machine = RequesterNegotiation(signer, pair.provider.peer_id)
    ours, theirs = pipe_pair()
    served = trio.Event()

    async def serve() -> None:
        try:
            await pair.provider.handle_stream(theirs, signer.peer_id)
        finally:
            served.set()

    pair.nursery.start_soon(serve)
    await ours.write(machine.send_request(task_id, spec, now=1.0))
    return served, await _next(machine, ours), ours, machine


async def _next(machine: RequesterNegotiation, stream: PipeEnd) -> object:
    with trio.fail_after(10):
        while (answer := machine.next_event()) is NEED_DATA:
            machine.receive_data(await stream.read(65536))
    return answer


async def test_offers_hold_nothing_and_gpus_are_taken_exclusively_at_accept(tmp_path: Path) -> None:
    async with task_pair(tmp_path, gpus=4) as pair:
        ledger = pair.provider.ledger
        spec = JobSpec(image=IMAGE, command=("true",), gpus=3, cpus=0.5, timeout=30)
        first_served, first, first_stream, first_machine = await _offer_for(pair, spec, "gpu-a")
        assert isinstance(first, Offer) and len(set(first.gpus)) == 3
        assert set(first.gpus) <= {g.uuid for g in ledger.gpus}
        # an offer is a quote: nothing is held, so a second requester is quoted too
        assert ledger.reservations() == () and len(ledger.free().gpus) == 4
        other = Signer.generate()
        second_served, second, second_stream, second_machine = await _offer_for(pair, spec, "gpu-b", other)
        assert isinstance(second, Offer) and len(second.gpus) == 3
        assert len(set(first.gpus) & set(second.gpus)) == 2  # the unquoted GPU is named first
        # the first to accept takes its GPUs; the other's accept is refused, signed, never double-booked
        await first_stream.write(first_machine.accept(now=2.0))
        assert isinstance(await _next(first_machine, first_stream), Lease)
        taken = ledger.reservation("gpu-a")
        assert taken is not None and taken.gpus == first.gpus
        await second_stream.write(second_machine.accept(now=2.0))
        refused = await _next(second_machine, second_stream)
        assert isinstance(refused, Reject) and refused.code is RejectCode.NO_CAPACITY
        assert second_machine.last_envelope  # the provider's signed answer
        with trio.fail_after(10):
            await second_served.wait()
        # the first requester walks away before countersigning: its hold is released with the stream
        await first_stream.close()
        with trio.fail_after(10):
            await first_served.wait()
        assert len(ledger.free().gpus) == 4 and ledger.reservations() == ()
        _, third, _, _ = await _offer_for(pair, JobSpec(image=IMAGE, command=("true",), gpus=4, timeout=30), "gpu-c")
        assert isinstance(third, Offer) and len(third.gpus) == 4


async def test_a_squatter_never_accepting_whole_capacity_blocks_nobody_and_is_bounded(tmp_path: Path) -> None:
    async with task_pair(tmp_path, cpus=2.0) as pair:
        provider = pair.provider
        squatter = Signer.generate()
        whole = JobSpec(image=IMAGE, command=("true",), cpus=2.0, memory=2 << 30, timeout=30, max_price=1e6)
        offers = [await _offer_for(pair, whole, f"squat-{n}", squatter) for n in range(2)]
        assert all(isinstance(answer, Offer) for _, answer, _, _ in offers)
        # a third open offer is one too many for this peer: busy, signed
        _, third, _, _ = await _offer_for(pair, whole, "squat-2", squatter)
        assert isinstance(third, Reject) and third.code is RejectCode.BUSY and "open" in third.detail
        # two offers for everything are open, never accepted: the advertised capacity is all free ...
        assert provider.ledger.free(holds=False).cpus == 2.0 and provider.ledger.reservations() == ()
        # ... and an honest job is placed and completes meanwhile
        task_id = await pair.run(JobSpec(image=IMAGE, command=("echo", "served"), cpus=0.5, timeout=30))
        result = await pair.store.get_result(task_id)
        assert result is not None and result.result.stdout == b"served\n"
        for served, _, stream, _ in offers:  # the squatter walks away without answering: lapsed
            await stream.close()
            with trio.fail_after(10):
                await served.wait()
        assert provider.guard.lapses(squatter.peer_id, provider.clock()) == pytest.approx(2, rel=0.01)
        served, declined, stream, machine = await _offer_for(pair, whole, "squat-c", squatter)
        assert isinstance(declined, Offer)
        await stream.write(machine.cancel("too dear"))  # declining is honest: not counted
        with trio.fail_after(10):
            await served.wait()
        assert provider.guard.lapses(squatter.peer_id, provider.clock()) == pytest.approx(2, rel=0.01)
        served, fourth, stream, _ = await _offer_for(pair, whole, "squat-3", squatter)
        assert isinstance(fourth, Offer)  # two lapses: still served; the third reaches the limit
        await stream.close()
        with trio.fail_after(10):
            await served.wait()
        _, fifth, _, _ = await _offer_for(pair, whole, "squat-4", squatter)
        assert isinstance(fifth, Reject) and fifth.code is RejectCode.BUSY and "lapse" in fifth.detail
        # the honest requester accrued nothing
        assert provider.guard.lapses(pair.requester.signer.peer_id, provider.clock()) == 0


@pytest.mark.parametrize("image", ["--privileged", "../../etc/passwd", "Upper/Case", "a" * 256])
async def test_a_bad_image_reference_is_a_signed_bad_request_before_any_lease(tmp_path: Path, image: str) -> None:
    async with task_pair(tmp_path) as pair:
        task_id = await pair.run(JobSpec(image=image, command=("true",), timeout=30))
        record = await pair.store.get_task(task_id)
        assert record is not None and record.state is TaskState.NOT_PLACED
        attempts = await pair.store.attempts(task_id)
        assert attempts and all(a.reason_code is RejectCode.BAD_REQUEST for a in attempts)
        assert attempts[0].signed and "image reference" in attempts[0].detail
        assert await pair.store.get_lease(task_id) is None and await pair.pstore.get_lease(task_id) is None
        assert pair.provider.ledger.reservations() == ()
        assert await pair.provider.runner.executor.list_owned() == []  # no container was created


