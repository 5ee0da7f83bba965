"""Every message the peerd network exchanges, as frozen typed classes.

A *Struct* is a typed record encoded as a msgpack map of its fields. A
*Message* is a Struct that can stand alone on the wire: its map also carries
``"v"`` (the protocol version) and ``"t"`` (its type tag, ``TYPE``). Field
ranges are checked on construction, so an absurd value can neither be built
locally (``LocalProtocolError``) nor decoded (``DecodeError``).

Units: memory and sizes in bytes, durations in seconds, timestamps in seconds
since the Unix epoch (float), prices in credits per hour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

# JobSpec, the control messages, the limits and the Message base live in light
# modules of their own (the CLI imports those alone); they are re-exported here.
from .control_messages import (
    ControlError as ControlError,
    ControlRequest as ControlRequest,
    ControlResponse as ControlResponse,
)
from .gang import (
    GangRef as GangRef,
    OverlayEndpoint as OverlayEndpoint,
    RosterMember as RosterMember,
    roster_problem,
)
from .gpumatch import is_version
from .jobspec import ImageContent as ImageContent, InputRef as InputRef, JobSpec as JobSpec
from .limits import (
    MAX_COUNT as MAX_COUNT,
    MAX_CPUS as MAX_CPUS,
    MAX_GPUS as MAX_GPUS,
    MAX_MEMORY as MAX_MEMORY,
    MAX_NODES as MAX_NODES,
    MAX_PRICE as MAX_PRICE,
    MAX_SEQ as MAX_SEQ,
    MAX_TIMEOUT as MAX_TIMEOUT,
    MAX_TIMESTAMP as MAX_TIMESTAMP,
)
from .roles import NodeRole as NodeRole
from .schema import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    Message as Message,
    Struct,
    check_len,
    check_range,
    check_text,
    fail as _fail,
)


# ---------------------------------------------------------------- enums
class RejectCode(enum.StrEnum):
    """Why a provider refused a task request (machine-readable)."""

    NO_CAPACITY = "no_capacity"
    NO_MATCHING_GPU = "no_matching_gpu"
    NO_GPU_RUNTIME = "no_gpu_runtime"
    IMAGE_NOT_ALLOWED = "image_not_allowed"
    IMAGE_UNAVAILABLE = "image_unavailable"
    TIME_LIMIT_TOO_LONG = "time_limit_too_long"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    PRICE_TOO_LOW = "price_too_low"
    BUSY = "busy"
    DRAINING = "draining"
    NOT_A_PROVIDER = "not_a_provider"
    BAD_REQUEST = "bad_request"
    OFFER_EXPIRED = "offer_expired"
    UNKNOWN_TASK = "unknown_task"
    INPUTS_TOO_LARGE = "inputs_too_large"
    GANG_NOT_SUPPORTED = "gang_not_supported"
    INTERNAL = "internal"


# Refusals that say "not now" rather than "never": the task waits (queued) for capacity to free.
TRANSIENT_REJECTS = frozenset({RejectCode.BUSY, RejectCode.NO_CAPACITY, RejectCode.DRAINING})


class TaskState(enum.StrEnum):
    """How a task ended (or where it is)."""

    PENDING = "pending"
    PLACING = "placing"
    QUEUED = "queued"  # at the requester: no provider has room now; placed when one has (holds nothing)
    STAGING = "staging"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OOM = "oom"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    NOT_PLACED = "not_placed"
    LOST = "lost"


FINAL_STATES = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMEOUT,
        TaskState.OOM,
        TaskState.CANCELLED,
        TaskState.INTERRUPTED,
        TaskState.NOT_PLACED,
        TaskState.LOST,
    }
)


class LogStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


# ---------------------------------------------------------------- resources
@dataclass(frozen=True, slots=True)
class GpuOffer(Struct):
    """One GPU a provider offers, as NVML reports it."""

    uuid: str
    model: str
    memory: int
    compute_capability: str

    def _check(self) -> None:
        # One expression first (adverts carry GPUs at gossip rate); on failure the checks one by one say which.
        if (0 < len(self.uuid) <= 128 and len(self.model) <= 128 and 0 <= self.memory <= MAX_MEMORY
                and len(self.compute_capability) <= 16):
            return
        check_text(self, "uuid", 128, nonempty=True)
        check_text(self, "model", 128)
        check_range(self, "memory", 0, MAX_MEMORY)
        check_text(self, "compute_capability", 16)


@dataclass(frozen=True, slots=True)
class Advert(Message):
    """A provider's signed description of what it offers right now (``gang``: it joins gang jobs)."""

    TYPE: ClassVar[str] = "advert"
    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset({"gang", "images", "gpu_driver", "cuda_version"})
    peer_id: str
    seq: int
    issued_at: float
    expires_at: float
    role: NodeRole
    addrs: tuple[str, ...]
    version: str
    cpus: float
    memory: int
    disk: int
    gpus: tuple[GpuOffer, ...]
    free_cpus: float
    free_memory: int
    free_gpus: tuple[str, ...]
    queue_depth: int
    running: int
    price_cpu_hour: float
    price_gpu_hour: float
    docker: bool
    gpu_runtime: bool
    network: bool
    max_timeout: float
    draining: bool
    gang: bool = False
    images: bool = False  # accepts images carried as job data (JobSpec.image_content)
    gpu_driver: str = ""  # the NVIDIA driver version ("550.54.15"); "" without GPUs
    cuda_version: str = ""  # the CUDA version that driver supports ("12.4"); "" without GPUs

    def _check(self) -> None:
        if not self._in_bounds():
            self._check_bounds()
        uuids = {g.uuid for g in self.gpus}
        if len(uuids) != len(self.gpus):
            _fail(type(self), "gpus", "lists a GPU twice")
        free = set(self.free_gpus)
        if len(free) != len(self.free_gpus):
            _fail(type(self), "free_gpus", "lists a GPU twice")
        if not free <= uuids:
            _fail(type(self), "free_gpus", "names a GPU not in gpus")
        for name in ("gpu_driver", "cuda_version"):
            value = getattr(self, name)
            if value and not is_version(value):
                _fail(type(self), name, f"must be a version such as 12.4, got {value!r:.40}")

    def _in_bounds(self) -> bool:
        """Every check of ``_check_bounds`` as one expression (adverts are checked at gossip rate)."""
        return (0 < len(self.peer_id) <= 128 and 0 <= self.seq <= MAX_SEQ
                and 0 <= self.issued_at <= self.expires_at <= MAX_TIMESTAMP
                and len(self.addrs) <= 16 and len(self.version) <= 64
                and 0 <= self.cpus <= MAX_CPUS and 0 <= self.memory <= MAX_MEMORY and 0 <= self.disk <= MAX_MEMORY
                and len(self.gpus) <= MAX_GPUS and 0 <= self.free_cpus <= self.cpus
                and 0 <= self.free_memory <= self.memory
                and 0 <= self.queue_depth <= MAX_COUNT and 0 <= self.running <= MAX_COUNT
                and 0 <= self.price_cpu_hour <= MAX_PRICE and 0 <= self.price_gpu_hour <= MAX_PRICE
                and 0 <= self.max_timeout <= MAX_TIMEOUT)

    def _check_bounds(self) -> None:
        """The bounds one by one: raises naming the first field out of bounds."""
        check_text(self, "peer_id", 128, nonempty=True)
        check_range(self, "seq", 0, MAX_SEQ)
        check_range(self, "issued_at", 0, MAX_TIMESTAMP)
        check_range(self, "expires_at", 0, MAX_TIMESTAMP)
        if self.expires_at < self.issued_at:
            _fail(type(self), "expires_at", "is before issued_at")
        check_len(self, "addrs", 16)
        check_text(self, "version", 64)
        check_range(self, "cpus", 0, MAX_CPUS)
        check_range(self, "memory", 0, MAX_MEMORY)
        check_range(self, "disk", 0, MAX_MEMORY)
        check_len(self, "gpus", MAX_GPUS)
        check_range(self, "free_cpus", 0, self.cpus)
        check_range(self, "free_memory", 0, self.memory)
        check_range(self, "queue_depth", 0, MAX_COUNT)
        check_range(self, "running", 0, MAX_COUNT)
        check_range(self, "price_cpu_hour", 0, MAX_PRICE)
        check_range(self, "price_gpu_hour", 0, MAX_PRICE)
        check_range(self, "max_timeout", 0, MAX_TIMEOUT)


def _check_task_id(obj: object) -> None:
    check_text(obj, "task_id", 64, nonempty=True)


@dataclass(frozen=True, slots=True)
class TaskRequest(Message):
    """Requester → provider: please run this (as rank ``gang.rank`` of a gang when ``spec.nodes`` ≥ 2)."""

    TYPE: ClassVar[str] = "request"
    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset({"gang"})
    task_id: str
    requester: str
    spec: JobSpec
    sent_at: float
    gang: GangRef | None = None

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "requester", 128, nonempty=True)
        check_range(self, "sent_at", 0, MAX_TIMESTAMP)
        _check_gang(self, self.spec, self.gang)


def _check_gang(obj: object, spec: JobSpec, gang: GangRef | None) -> None:
    """A gang job (``spec.nodes`` ≥ 2) names its gang, of ``spec.nodes`` ranks; a one-node job names none."""
    if gang is None and spec.nodes != 1:
        _fail(type(obj), "gang", f"is missing for a job on {spec.nodes} nodes")
    if gang is not None and gang.size != spec.nodes:
        _fail(type(obj), "gang", f"has {gang.size} ranks, the spec {spec.nodes} nodes")


@dataclass(frozen=True, slots=True)
class Offer(Message):
    """Provider → requester: I hold these resources for you until ``expires_at``.

    A gang member's offer also carries its WireGuard public key and UDP endpoint (``overlay``).
    """

    TYPE: ClassVar[str] = "offer"
    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset({"overlay"})
    task_id: str
    price: float
    expires_at: float
    cpus: float
    memory: int
    gpus: tuple[str, ...]
    overlay: OverlayEndpoint | None = None

    def _check(self) -> None:
        _check_task_id(self)
        check_range(self, "price", 0, MAX_PRICE)
        check_range(self, "expires_at", 0, MAX_TIMESTAMP)
        check_range(self, "cpus", 0, MAX_CPUS)
        check_range(self, "memory", 0, MAX_MEMORY)
        check_len(self, "gpus", MAX_GPUS)


@dataclass(frozen=True, slots=True)
class Reject(Message):
    """Provider → requester: no, with a machine-readable reason."""

    TYPE: ClassVar[str] = "reject"
    task_id: str
    code: RejectCode
    detail: str

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "detail", 1024)


@dataclass(frozen=True, slots=True)
class Accept(Message):
    """Requester → provider: I take the offer at this price (a gang's: with every rank's overlay side)."""

    TYPE: ClassVar[str] = "accept"
    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset({"roster"})
    task_id: str
    price: float
    roster: tuple[RosterMember, ...] = ()

    def _check(self) -> None:
        _check_task_id(self)
        check_range(self, "price", 0, MAX_PRICE)
        _check_roster(self, self.roster)


def _check_roster(obj: object, roster: tuple[RosterMember, ...]) -> None:
    problem = roster_problem(roster) if roster else None
    if problem is not None:
        _fail(type(obj), "roster", problem)


@dataclass(frozen=True, slots=True)
class LeaseTerms(Message):
    """What both parties sign before the job starts (a gang member's: also the gang and its roster)."""

    TYPE: ClassVar[str] = "lease_terms"
    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset({"gang", "roster"})
    task_id: str
    requester: str
    provider: str
    spec: JobSpec
    price: float
    gpus: tuple[str, ...]
    issued_at: float
    expires_at: float
    gang: GangRef | None = None
    roster: tuple[RosterMember, ...] = ()

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "requester", 128, nonempty=True)
        check_text(self, "provider", 128, nonempty=True)
        check_range(self, "price", 0, MAX_PRICE)
        check_len(self, "gpus", MAX_GPUS)
        check_range(self, "issued_at", 0, MAX_TIMESTAMP)
        check_range(self, "expires_at", 0, MAX_TIMESTAMP)
        _check_gang(self, self.spec, self.gang)
        _check_roster(self, self.roster)
        if self.gang is not None and len(self.roster) != self.gang.size:
            _fail(type(self), "roster", f"has {len(self.roster)} members, the gang {self.gang.size} ranks")
        if self.gang is not None and self.roster[self.gang.rank].peer != self.provider:
            _fail(type(self), "roster", "does not name the provider at its rank")
        if self.gang is None and self.roster:
            _fail(type(self), "roster", "is for gang jobs only")


@dataclass(frozen=True, slots=True)
class ReceiptTerms(Message):
    """What both parties sign after the job ends."""

    TYPE: ClassVar[str] = "receipt_terms"
    task_id: str
    requester: str
    provider: str
    lease_digest: str
    state: TaskState
    exit_code: int | None
    stdout_digest: str
    stderr_digest: str
    output_digest: str
    output_size: int
    wall_time: float
    gpu_seconds: float
    price: float
    cost: float
    finished_at: float
    staging_time: float = 0.0  # seconds spent fetching and writing inputs, before the run (not in wall_time)

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "requester", 128, nonempty=True)
        check_text(self, "provider", 128, nonempty=True)
        for name in ("lease_digest", "stdout_digest", "stderr_digest", "output_digest"):
            check_text(self, name, 128)
        if self.exit_code is not None:
            check_range(self, "exit_code", -(1 << 31), (1 << 31) - 1)
        check_range(self, "output_size", 0, MAX_MEMORY)
        check_range(self, "wall_time", 0, MAX_TIMEOUT * 2)
        check_range(self, "gpu_seconds", 0, MAX_TIMEOUT * 2 * MAX_GPUS)
        check_range(self, "price", 0, MAX_PRICE)
        check_range(self, "cost", 0, MAX_PRICE * MAX_TIMEOUT)
        check_range(self, "finished_at", 0, MAX_TIMESTAMP)
        check_range(self, "staging_time", 0, MAX_TIMEOUT * 2)


@dataclass(frozen=True, slots=True)
class CoSigned(Message):
    """Terms (exact bytes) signed by both the requester and the provider."""

    terms: bytes
    provider_sig: bytes
    requester_sig: bytes

    def _check(self) -> None:
        for name in ("provider_sig", "requester_sig"):
            if len(getattr(self, name)) not in (0, 64):
                _fail(type(self), name, "must be empty or a 64-byte Ed25519 signature")


@dataclass(frozen=True, slots=True)
class Lease(CoSigned):
    TYPE: ClassVar[str] = "lease"


@dataclass(frozen=True, slots=True)
class Receipt(CoSigned):
    TYPE: ClassVar[str] = "receipt"


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Provider → requester: progress of a leased task."""

    TYPE: ClassVar[str] = "status"
    task_id: str
    state: TaskState
    detail: str
    at: float

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "detail", 1024)
        check_range(self, "at", 0, MAX_TIMESTAMP)


@dataclass(frozen=True, slots=True)
class LogChunk(Message):
    """Provider → requester: a piece of the job's output as it comes."""

    TYPE: ClassVar[str] = "log"
    task_id: str
    stream: LogStream
    seq: int
    data: bytes

    def _check(self) -> None:
        _check_task_id(self)
        check_range(self, "seq", 0, MAX_COUNT)
        if len(self.data) > 64 << 10:
            _fail(type(self), "data", "is larger than 64 KiB")


@dataclass(frozen=True, slots=True)
class Result(Message):
    """Provider → requester: how the job ended."""

    TYPE: ClassVar[str] = "result"
    task_id: str
    state: TaskState
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    output_digest: str
    output_size: int
    wall_time: float
    gpu_seconds: float
    detail: str

    def _check(self) -> None:
        _check_task_id(self)
        if self.exit_code is not None:
            check_range(self, "exit_code", -(1 << 31), (1 << 31) - 1)
        check_text(self, "output_digest", 128)
        check_range(self, "output_size", 0, MAX_MEMORY)
        check_range(self, "wall_time", 0, MAX_TIMEOUT * 2)
        check_range(self, "gpu_seconds", 0, MAX_TIMEOUT * 2 * MAX_GPUS)
        check_text(self, "detail", 1024)


# ``Cancel.reason`` of a lease the requester replaced: the provider was unreachable
# longer than the requester waits, so the task was placed elsewhere and this lease
# must end (reason = this word, optionally followed by ": " and an explanation).
CANCEL_SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Requester → provider: stop this task (``reason`` free text, or ``CANCEL_SUPERSEDED``)."""

    TYPE: ClassVar[str] = "cancel"
    task_id: str
    reason: str

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "reason", 1024)


@dataclass(frozen=True, slots=True)
class Resume(Message):
    """Requester → provider, on a new stream: continue a leased task.

    The provider answers as it would on the original stream (status, log
    chunks from ``log_seq`` on, result, receipt) if the lease is still valid,
    or with a Reject.
    """

    TYPE: ClassVar[str] = "resume"
    task_id: str
    lease_digest: str
    log_seq: int

    def _check(self) -> None:
        _check_task_id(self)
        check_text(self, "lease_digest", 128, nonempty=True)
        check_range(self, "log_seq", 0, MAX_COUNT)


@dataclass(frozen=True, slots=True)
class Envelope(Message):
    """Exact payload bytes signed by ``signer`` (a libp2p peer ID)."""

    TYPE: ClassVar[str] = "envelope"
    payload: bytes
    signer: str
    sig: bytes

    def _check(self) -> None:
        check_text(self, "signer", 128, nonempty=True)
        if len(self.sig) != 64:
            _fail(type(self), "sig", "must be a 64-byte Ed25519 signature")


# The table of every top-level message, by type tag.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Advert,
        TaskRequest,
        Offer,
        Reject,
        Accept,
        LeaseTerms,
        Lease,
        Status,
        LogChunk,
        Result,
        ReceiptTerms,
        Receipt,
        Cancel,
        Resume,
        Envelope,
        ControlRequest,
        ControlResponse,
    )
}
