"""The provider side of a task: admission, offer, lease, run, result, receipt.

``Provider.handle_stream`` serves one ``/peerd/task/1.0.0`` stream. A request
is admitted against policy (the image reference and environment included),
price, the per-peer bounds of ``OfferGuard``, the fair share between
requesters (``peerd.jobs.fairshare``: one that runs its share here while
another one turned away for capacity waits is refused ``busy``) and free
capacity; a refusal is a signed ``Reject`` with a reason code. The Offer is a
*quote*: it holds no capacity, so offers nobody accepts cannot lock a provider
(nor show in its advert as used). Capacity and the fair share are checked
again and capacity is taken, atomically, when the Accept arrives (the GPUs the
offer named, or ``Reject(no_capacity)``), with a job slot (``max_concurrent``,
or ``Reject(busy)``); it is a hold until the countersigned lease comes back,
then confirmed. Once both parties signed the lease it is written to the store
*before* the container starts, and the job then runs in the provider's own
nursery, independent of the stream: a requester that reconnects with
``Resume`` picks up the logs, result and receipt. Every exit path releases the
ledger.

A gang member's request (``request.gang``) is admitted only where ``[gang]
enabled``; its offer carries a WireGuard public key made for this lease and a
UDP endpoint (``peerd.jobs.gangmember``), and the job starts with the overlay
and the environment contract built from the countersigned lease.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from peerd.errors import PeerdError
from peerd.executor.contract import OverlaySpec, RunSpec
from peerd.executor.errors import ExecutorError, Reason
from peerd.executor.gpus import CapacityLedger
from peerd.executor.policy import ProviderPolicy
from peerd.jobs.fairshare import FairShare, Use, use_by_requester
from peerd.jobs.gangmember import EndpointPorts, NoFreePort, gang_env, overlay_spec
from peerd.jobs.jobrun import JobRunner
from peerd.jobs.leasedjob import LeasedJob
from peerd.jobs.taskwire import (
    ByteStream,
    PeerGone,
    PeerTimeout,
    TaskChannel,
    TaskWireError,
    single_error,
)
from peerd.market.offerguard import GuardLimits, OfferGuard
from peerd.overlay.keys import WireGuardKeys, generate_keys
from protocol import ProtocolError
from protocol.gpumatch import version_at_least
from protocol.messages import (
    Accept,
    Cancel,
    Lease,
    LeaseTerms,
    OverlayEndpoint,
    Receipt,
    RejectCode,
    Resume,
    TaskRequest,
)
from protocol.negotiation import ProviderNegotiation
from protocol.signing import Signer, digest

log = logging.getLogger(__name__)

REJECT_FOR_REASON: dict[Reason, RejectCode] = {
    Reason.IMAGE_NOT_ALLOWED: RejectCode.IMAGE_NOT_ALLOWED,
    Reason.TIME_LIMIT_TOO_LONG: RejectCode.TIME_LIMIT_TOO_LONG,
    Reason.NETWORK_NOT_ALLOWED: RejectCode.NETWORK_NOT_ALLOWED,
    Reason.CPUS_OVER_LIMIT: RejectCode.NO_CAPACITY,
    Reason.MEMORY_OVER_LIMIT: RejectCode.NO_CAPACITY,
    Reason.NO_GPU_RUNTIME: RejectCode.NO_GPU_RUNTIME,
    Reason.NO_CAPACITY: RejectCode.NO_CAPACITY,
    Reason.NO_MATCHING_GPU: RejectCode.NO_MATCHING_GPU,
    Reason.DUPLICATE_TASK: RejectCode.BAD_REQUEST,
    Reason.INVALID_SPEC: RejectCode.BAD_REQUEST,
    Reason.IMAGE_UNAVAILABLE: RejectCode.IMAGE_UNAVAILABLE,
}


_STREAM_ERRORS = (ProtocolError, TaskWireError)

Channel = TaskChannel[ProviderNegotiation]


class Refusal(Exception):
    """Internal: a request is refused with ``code`` (becomes a signed Reject).

    ``for_capacity``: turned away only because this provider is full now (the
    requester then waits, for ``FairShare``)."""

    def __init__(self, code: RejectCode, detail: str, *, for_capacity: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.for_capacity = for_capacity


@dataclass(frozen=True)
class GangSettings:
    """``[gang]``: this provider joins gang jobs, reachable by the other members at ``endpoint_host``
    on a UDP port of ``first``..``last`` (0, 0: a free port the kernel picks)."""

    endpoint_host: str
    first_port: int = 0
    last_port: int = 0


@dataclass(frozen=True)
class _Member:
    """What a gang member's negotiation keeps between its offer and its lease."""

    keys: WireGuardKeys
    port: int
    endpoint: OverlayEndpoint


@dataclass(frozen=True)
class ProviderSettings:
    price_cpu_hour: float
    price_gpu_hour: float
    policy: ProviderPolicy
    pids: int = 512
    offer_hold: float = 15.0
    io_timeout: float = 30.0
    keepalive: float = 5.0
    max_concurrent: int = 8
    lease_grace: float = 60.0
    offers_per_peer: int = GuardLimits.offers_per_peer
    lapse_limit: int = GuardLimits.lapse_limit
    gang: GangSettings | None = None  # None: gang requests are refused (gang_not_supported)


class Ending(enum.Enum):
    """How a negotiation that got an offer ended (what ``OfferGuard`` counts)."""

    LEASED = "leased"
    DECLINED = "declined"  # the requester cancelled, or capacity was gone at Accept: no fault
    LAPSED = "lapsed"  # never answered, answered too late, or the lease was never countersigned


class Provider:
    def __init__(
        self,
        *,
        signer: Signer,
        ledger: CapacityLedger,
        runner: JobRunner,
        settings: ProviderSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.ledger = ledger
        self.runner = runner
        self.settings = settings
        self.clock = clock
        self.draining = False
        self.guard = OfferGuard(
            GuardLimits(offers_per_peer=settings.offers_per_peer, lapse_limit=settings.lapse_limit)
        )
        self._quoted: dict[int, tuple[str, ...]] = {}  # open offers' GPUs, so quotes spread over GPUs
        self._quote_ids = itertools.count()
        self._gang_offers: set[str] = set()  # tasks with an open gang offer (they hold an endpoint port)
        self.fair = FairShare()  # requesters lately turned away for capacity (peerd.jobs.fairshare)
        gang = settings.gang
        self.ports = None if gang is None else EndpointPorts(
            gang.endpoint_host, gang.first_port, gang.last_port,
            live=lambda: self._gang_offers | set(self.runner.jobs),
        )

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    # ------------------------------------------------------------ admission
    def admit(self, request: TaskRequest, remote_peer: str) -> RunSpec:
        """Check one request; raise Refusal with the reason code, or return its RunSpec."""
        if self.draining:
            raise Refusal(RejectCode.DRAINING, "this provider is draining and takes no new tasks")
        if request.requester != remote_peer:
            raise Refusal(RejectCode.BAD_REQUEST, "requester field differs from the stream's peer")
        spec = request.spec
        if request.gang is not None and self.ports is None:
            raise Refusal(RejectCode.GANG_NOT_SUPPORTED, "this provider does not join gang jobs ([gang] enabled)")
        if request.gang is not None and spec.network:
            raise Refusal(RejectCode.NETWORK_NOT_ALLOWED, "a gang job's only network is its overlay")
        price = self.price(request)
        if price > spec.max_price:
            raise Refusal(
                RejectCode.PRICE_TOO_LOW,
                f"price here is {price:.6g}/h for this job, above the job's max {spec.max_price:.6g}/h",
            )
        cuda = self.ledger.gpus[0].cuda_version if self.ledger.gpus else ""
        if spec.gpus and not version_at_least(cuda, spec.min_cuda):
            raise Refusal(RejectCode.NO_MATCHING_GPU,
                          f"the job needs CUDA {spec.min_cuda}; this provider's driver supports {cuda or 'none'}")
        placeholder = tuple(f"GPU-pending-{i}" for i in range(spec.gpus))  # real UUIDs come from the ledger
        try:
            run_spec = self._run_spec(request, placeholder)
            self.settings.policy.check(run_spec, gpu_runtime=self.runner.executor.gpu_runtime)
        except ExecutorError as exc:
            raise Refusal(REJECT_FOR_REASON.get(exc.reason, RejectCode.BAD_REQUEST), exc.detail) from exc
        return run_spec

    async def _admit_inputs(self, request: TaskRequest) -> None:
        """Job data (``peerd.data.jobdata``): mountable destinations, and room for the declared bytes."""
        """Job data (``peerd.data.jobdata``, ``peerd.data.imagereceive``): a carried image welcome here, mountable
        destinations, and room for the declared bytes."""
        data = self.runner.data
        await self._admit_image_cuda(request)
        if request.spec.image_content is not None:
            await self._admit_image(request)
        if not request.spec.inputs:
            return
        if data is None:
            raise Refusal(RejectCode.INPUTS_TOO_LARGE, "this provider keeps no job data (no chunk store)")
        try:
            data.check_targets(request.spec, data.task_dir(request.task_id))
        except ExecutorError as exc:
            raise Refusal(RejectCode.BAD_REQUEST, exc.detail) from exc
        detail = await data.room_refusal(request.spec)
        if detail is not None:
            raise Refusal(RejectCode.INPUTS_TOO_LARGE, detail)

    async def _admit_image_cuda(self, request: TaskRequest) -> None:
        """A GPU job whose image (here already) needs a newer CUDA than this driver's is refused before any offer."""
        spec = request.spec
        if not spec.gpus or spec.image_content is not None:
            return
        need = await self.runner.executor.image_cuda(spec.image)
        cuda = self.ledger.gpus[0].cuda_version if self.ledger.gpus else ""
        if need and not version_at_least(cuda, need):
            raise Refusal(RejectCode.NO_MATCHING_GPU, f"image {spec.image} needs CUDA {need} (NVIDIA_REQUIRE_CUDA); "
                                                      f"this provider's driver supports {cuda or 'none'}")

    async def _admit_image(self, request: TaskRequest) -> None:
        """A carried image: taken here at all, and room for it (least recently used images make way)."""
        images, data, content = self.runner.images, self.runner.data, request.spec.image_content
        assert content is not None
        if images is None or data is None:
            raise Refusal(RejectCode.IMAGE_NOT_ALLOWED, "this provider takes no images carried by the requester")
        refusal = images.refusal(content)
        if refusal is not None:
            raise Refusal(RejectCode.IMAGE_NOT_ALLOWED, refusal)
        try:
            if await images.present(content.id):
                return
            need = request.spec.data_size
            if await data.room() < need:
                await images.collect(need)
            room = await data.room()
        except (ExecutorError, PeerdError) as exc:
            raise Refusal(RejectCode.IMAGE_UNAVAILABLE, f"cannot take the image here now: {exc}") from exc
        if room < need:
            raise Refusal(RejectCode.INPUTS_TOO_LARGE,
                          f"an image and inputs of {need} bytes; room for {room} bytes of job data here")

    def price(self, request: TaskRequest) -> float:
        # The same rule as market.price_for applies to our own advert.
        spec = request.spec
        return spec.cpus * self.settings.price_cpu_hour + spec.gpus * self.settings.price_gpu_hour

    def _run_spec(self, request: TaskRequest, gpus: tuple[str, ...]) -> RunSpec:
        spec = request.spec
        return RunSpec(
            task_id=request.task_id,
            image=spec.image,
            command=spec.command,
            env=spec.env,
            cpus=spec.cpus,
            memory=spec.memory,
            pids=self.settings.pids,
            gpus=gpus,
            network=spec.network,
            timeout=spec.timeout,
            image_id=spec.image_content.id if spec.image_content else "",
        )

    def _quote(self, request: TaskRequest, now: float) -> tuple[str, ...]:
        """The GPUs an offer names, if the request fits now; nothing is taken."""
        spec = request.spec
        others = frozenset(uuid for gpus in self._quoted.values() for uuid in gpus)
        try:
            return self.ledger.quote(
                cpus=spec.cpus, memory=spec.memory, gpu_count=spec.gpus, gpu_model=spec.gpu_model or None,
                min_gpu_memory=spec.gpu_memory, min_capability=spec.min_compute_capability, now=now, avoid=others,
            )
        except ExecutorError as exc:
            code = REJECT_FOR_REASON.get(exc.reason, RejectCode.NO_CAPACITY)
            full = exc.reason is Reason.NO_CAPACITY and self._fits_when_free(request)
            raise Refusal(code, exc.detail, for_capacity=full) from exc

    def _check_slots(self, now: float) -> None:
        """``max_concurrent`` counts the jobs running and those whose capacity was taken at accept
        (offers hold nothing: many may be accepted at once)."""
        taken = sum(1 for r in self.ledger.reservations() if r.hold_until is None or r.hold_until > now)
        if taken >= self.settings.max_concurrent:
            raise Refusal(RejectCode.BUSY, f"{taken} jobs running or starting, the limit here", for_capacity=True)

    def _take(self, request: TaskRequest, gpus: tuple[str, ...], now: float) -> None:
        """At Accept: hold exactly what the offer named until the lease is countersigned."""
        self._check_slots(now)  # others may have taken the slots since the offer
        self._check_fair_share(request.requester, now)  # a requester may have been turned away since then
        spec = request.spec
        try:
            self.ledger.reserve(
                request.task_id, cpus=spec.cpus, memory=spec.memory, gpu_count=spec.gpus,
                gpu_model=spec.gpu_model or None, min_gpu_memory=spec.gpu_memory,
                min_capability=spec.min_compute_capability, gpus=gpus,
                now=now, hold_until=now + 2 * self.settings.io_timeout + 1.0,  # send + receive, each bounded
            )
        except ExecutorError as exc:
            full = exc.reason is not Reason.DUPLICATE_TASK
            code = RejectCode.NO_CAPACITY if full else RejectCode.BAD_REQUEST
            raise Refusal(code, f"{exc.detail} (taken since the offer)", for_capacity=full) from exc

    # ------------------------------------------------------------ fair share (peerd.jobs.fairshare)
    def _check_fair_share(self, requester: str, now: float) -> None:
        """Refuse ``requester`` (busy) while it runs its share here and a requester turned away waits."""
        held = use_by_requester((job.terms.requester, _use_of(job.terms)) for job in self.runner.jobs.values())
        whole = Use(self.settings.max_concurrent, self.ledger.total_cpus, self.ledger.total_memory,
                    len(self.ledger.gpus))
        detail = self.fair.refusal(requester, held, whole, now)
        if detail is not None:
            raise Refusal(RejectCode.BUSY, detail)

    def _fits_when_free(self, request: TaskRequest) -> bool:
        """Whether the request fits this provider once it is idle (if not, waiting here is pointless)."""
        spec = request.spec
        return (spec.cpus <= self.ledger.total_cpus and spec.memory <= self.ledger.total_memory
                and spec.gpus <= len(self.ledger.gpus))

    # ------------------------------------------------------------ streams
    async def handle_stream(self, stream: ByteStream, remote_peer: str) -> None:
        """Serve one task stream; protocol and stream errors end only this stream."""
        machine = ProviderNegotiation(self.signer, remote_peer)
        channel = TaskChannel(stream, machine, timeout=self.settings.io_timeout)
        try:
            try:
                await self._dispatch(channel, remote_peer)
            except BaseExceptionGroup as group:
                raise single_error(group, _STREAM_ERRORS) from None
        except ProtocolError as exc:
            log.warning("task stream from %s broke the protocol: %s", remote_peer[:16], exc)
        except TaskWireError as exc:
            log.info("task stream from %s ended: %s", remote_peer[:16], exc)
        finally:
            await channel.close()

    async def _dispatch(self, channel: Channel, remote_peer: str) -> None:
        first = await channel.receive()
        if isinstance(first, TaskRequest):
            await self._negotiate(channel, first, remote_peer)
        elif isinstance(first, Resume):
            await self._resume(channel, first, remote_peer)

    async def _negotiate(self, channel: Channel, request: TaskRequest, remote_peer: str) -> None:
        now = self.clock()
        try:
            if await self.runner.id_taken(request.task_id, request.requester):
                raise Refusal(RejectCode.BAD_REQUEST, f"task {request.task_id} is already known here")
            run_spec = self.admit(request, remote_peer)
            await self._admit_inputs(request)
            refusal = self.guard.refusal(remote_peer, now)
            if refusal is not None:
                raise Refusal(RejectCode.BUSY, refusal)
            self._check_slots(now)  # after every permanent reason: "busy" means "ask again later"
            self._check_fair_share(request.requester, now)
            gpus = self._quote(request, now)
            member = self._member(request)
        except Refusal as refusal:
            await self._refuse(channel, request, remote_peer, refusal)
            return
        quote_id = next(self._quote_ids)
        self._quoted[quote_id] = gpus
        self.guard.opened(remote_peer)
        ending = Ending.LAPSED
        try:
            ending = await self._offer_and_lease(channel, request, run_spec, gpus, now, member)
        finally:
            del self._quoted[quote_id]
            self._gang_offers.discard(request.task_id)
            if ending is not Ending.LEASED and self.ports is not None:
                self.ports.release(request.task_id)
            self.guard.closed(remote_peer, lapsed=ending is Ending.LAPSED, now=self.clock())
        job = self.runner.get(request.task_id) if ending is Ending.LEASED else None
        if job is not None:
            await self.serve(channel, job, from_seq=0)

    def _member(self, request: TaskRequest) -> _Member | None:
        """A gang member's key pair and endpoint for this lease (None for a one-node job)."""
        if request.gang is None or self.ports is None:
            return None
        try:
            port = self.ports.take(request.task_id)
        except NoFreePort as exc:
            raise Refusal(RejectCode.BUSY, str(exc)) from exc
        self._gang_offers.add(request.task_id)
        keys = generate_keys()
        return _Member(keys, port, OverlayEndpoint(public_key=keys.public_key, endpoint=self.ports.endpoint(port)))

    async def _refuse(self, channel: Channel, request: TaskRequest, remote_peer: str, refusal: Refusal) -> None:
        log.info("rejecting %s from %s: %s", request.task_id, remote_peer[:16], refusal.detail)
        if refusal.for_capacity:
            self.fair.refused(request.requester, self.clock())
        await channel.send_frame(channel.machine.reject(refusal.code, refusal.detail))

    async def _offer_and_lease(
        self, channel: Channel, request: TaskRequest, run_spec: RunSpec, gpus: tuple[str, ...], now: float,
        member: _Member | None = None,
    ) -> Ending:
        machine = channel.machine
        price = self.price(request)
        expires = now + self.settings.offer_hold
        overlay = None if member is None else member.endpoint
        await channel.send_frame(machine.send_offer(price=price, gpus=gpus, expires_at=expires, overlay=overlay))
        answer = await channel.receive(timeout=max(expires - self.clock(), 0.0))
        if isinstance(answer, Cancel):
            return Ending.DECLINED
        assert isinstance(answer, Accept)
        if machine.offer_expired(self.clock()):
            await channel.send_frame(machine.reject(RejectCode.OFFER_EXPIRED, "the offer expired"))
            return Ending.LAPSED
        try:
            self._take(request, gpus, self.clock())
        except Refusal as refusal:
            await self._refuse(channel, request, request.requester, refusal)
            return Ending.DECLINED
        ending = Ending.LAPSED
        try:
            ending = await self._lease(channel, request, run_spec, gpus, member)
        finally:
            if ending is not Ending.LEASED:
                self.ledger.release(request.task_id)
        return ending

    async def _lease(
        self, channel: Channel, request: TaskRequest, run_spec: RunSpec, gpus: tuple[str, ...],
        member: _Member | None = None,
    ) -> Ending:
        """Capacity is held: propose the lease, wait for the countersignature, launch."""
        machine = channel.machine
        issued = self.clock()
        expires = issued + request.spec.timeout + self.settings.lease_grace
        terms = machine.draft_lease(issued_at=issued, expires_at=expires)
        await channel.send_frame(machine.propose_lease(terms))
        signed = await channel.receive(timeout=self.settings.io_timeout)
        if isinstance(signed, Cancel):
            return Ending.DECLINED
        assert isinstance(signed, Lease)  # the machine checked it: our terms, both signatures
        try:
            self.ledger.confirm(request.task_id)
        except ExecutorError as exc:  # the hold lapsed (a very slow stream): the job cannot start here
            log.warning("lease of %s countersigned too late: %s", request.task_id, exc.detail)
            return Ending.LAPSED
        final_spec = dataclasses.replace(run_spec, gpus=gpus)  # the leased GPUs, not placeholders
        if member is not None:
            final_spec = with_overlay(final_spec, terms, member)
        await self.runner.launch(terms, signed, final_spec)
        self.fair.served(request.requester)
        return Ending.LEASED

    async def _resume(self, channel: Channel, resume: Resume, remote_peer: str) -> None:
        job = self.runner.get(resume.task_id) or await self.runner.load_finished(resume.task_id)
        if job is None or job.terms.requester != remote_peer or digest(job.lease_bytes) != resume.lease_digest:
            await channel.send_frame(channel.machine.reject(RejectCode.UNKNOWN_TASK, "no such lease here"))
            return
        channel.machine.attach_lease(job.lease)
        await self.serve(channel, job, from_seq=resume.log_seq)

    # ------------------------------------------------------------ serving a leased job
    async def serve(self, channel: Channel, job: LeasedJob, *, from_seq: int) -> None:
        """Stream status, logs, result and receipt; handle cancel and the countersigned receipt."""
        countersigned = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_requester, channel, job, countersigned)
            await channel.send_frame(channel.machine.send_status(job.phase, "leased", at=self.clock()))
            await self._send_until_result(channel, job, from_seq)
            with trio.move_on_after(self.settings.io_timeout):
                await countersigned.wait()
            nursery.cancel_scope.cancel()

    async def _send_until_result(self, channel: Channel, job: LeasedJob, seq: int) -> None:
        while True:
            for chunk in job.chunks_from(seq):
                await channel.send(chunk)
                seq = chunk.seq + 1
            if job.result is not None and seq >= job.next_seq:
                break
            with trio.move_on_after(self.settings.keepalive) as idle:
                await job.wait_changed()
            if idle.cancelled_caught:
                await channel.send_frame(channel.machine.send_status(job.phase, "heartbeat", at=self.clock()))
        assert job.result is not None and job.receipt is not None
        # the job made these apart from any stream; the machine checks them against the lease
        await channel.send(job.result)
        # always a proposal (our signature only), even if an earlier stream already got it countersigned
        await channel.send(dataclasses.replace(job.receipt, requester_sig=b""))

    async def _read_requester(self, channel: Channel, job: LeasedJob, countersigned: trio.Event) -> None:
        try:
            while True:
                msg = await channel.receive(timeout=job.terms.expires_at - self.clock() + self.settings.io_timeout)
                if isinstance(msg, Cancel):
                    await self.runner.cancel(job.task_id, msg.reason or "cancelled by the requester")
                elif isinstance(msg, Receipt):  # the machine checked it: our terms, both signatures
                    await self.runner.store_receipt(job, msg)
                    countersigned.set()
                    return
        except (PeerGone, PeerTimeout) as exc:
            log.info("requester of %s went away: %s (the job runs on)", job.task_id, exc)
        except ProtocolError as exc:
            log.warning("requester of %s broke the protocol: %s (the job runs on)", job.task_id, exc)


def _use_of(terms: LeaseTerms) -> Use:
    """What one running job holds, for the fair share."""
    return Use(1, terms.spec.cpus, terms.spec.memory, terms.spec.gpus)


def with_overlay(run_spec: RunSpec, terms: LeaseTerms, member: _Member) -> RunSpec:
    """A gang member's RunSpec: the overlay and the environment contract, both from the signed terms."""
    overlay: OverlaySpec = overlay_spec(terms, private_key=member.keys.private_key, listen_port=member.port)
    env = dict(run_spec.env) | gang_env(terms)
    return dataclasses.replace(run_spec, overlay=overlay, env=env)
