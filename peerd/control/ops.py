"""``NodeOps``: what the control socket asks of the node, and its views.

``peerd.daemon.operations`` implements ``NodeOps`` over the daemon's services; the control server calls
exactly one operation per request. Every view is a ``TypedDict`` — a plain
dict at run time, JSON-able except ``LogChunkView.data`` (bytes) — so the
server sends it as is and the CLI prints it as is.

An operation that cannot do what was asked raises an ``OpError`` (its ``code``
goes on the wire: ``TaskNotFound`` → ``not_found``, ``BadArgs`` →
``bad_args``, a plain ``OpError`` → ``failed``; a subclass may set another
code, e.g. ``protocol.control.UNAVAILABLE``); any other ``PeerdError`` is sent
as ``failed``. Other exceptions are daemon bugs: logged, ``internal``, connection
closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NotRequired, Protocol, TypedDict

from peerd.control.wire import BAD_ARGS, FAILED, NOT_FOUND
from peerd.errors import PeerdError
from protocol.messages import JobSpec
from protocol.schema import Value


# ---------------------------------------------------------------- errors
@dataclass(frozen=True, slots=True)
class Queueing:
    """How a submitted task waits for room: ``timeout`` seconds at most (None: the node's
    ``[requester] queue_timeout``; 0: it does not wait), and ``priority`` (higher is placed first)."""

    timeout: float | None = None
    priority: int = 0


NODE_DEFAULT = Queueing()


class OpError(PeerdError):
    """An operation refused or failed; ``code`` is sent to the client."""

    code: str = FAILED


class BadArgs(OpError):
    code = BAD_ARGS


class TaskNotFound(OpError):
    code = NOT_FOUND

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class PeerNotFound(OpError):
    code = NOT_FOUND

    def __init__(self, peer_id: str) -> None:
        super().__init__(f"no peer {peer_id!r}: no live advert and no dealings with it")
        self.peer_id = peer_id


# ---------------------------------------------------------------- views
class ConfigReloadView(TypedDict):
    """The last SIGHUP reload: applied (``ok``) or refused, with why and when (unix time)."""

    ok: bool
    error: str  # "" when ok
    at: float


class ReachabilityStatus(TypedDict):
    reachability: str  # protocol.reachability.Reachability: public | relayed | unreachable | unknown
    relay_addrs: list[str]  # our circuit addresses in use (relayed only)
    hint: str  # what to do about it, if anything
    relays_lost: int  # relays that went away and were replaced


class GpuSlotView(TypedDict):
    uuid: str
    model: str
    memory: int  # bytes
    task_id: str  # the task holding it; "" when free


class CapacityView(TypedDict):
    """A provider's offered capacity now: totals and what reservations (holds or leases) take."""

    cpus: float
    cpus_free: float
    memory: int  # bytes
    memory_free: int
    gpus: list[GpuSlotView]


class StatusView(TypedDict):
    peer_id: str
    addrs: list[str]  # full multiaddrs, each ending /p2p/<peer_id>
    role: str  # provider | requester | seed
    peers_connected: int
    peers_known: int
    tasks_running: int
    tasks_queued: int
    version: str
    counters: dict[str, int]
    draining: bool
    config_reload: ConfigReloadView | None  # None until the first SIGHUP
    reachability: NotRequired[ReachabilityStatus]  # from P2PService.reachability()
    capacity: NotRequired[CapacityView]  # providers only
    uptime: NotRequired[float]  # seconds since the node started



class ReputationView(TypedDict):
    """What this node's dealings with a provider came to (``peerd.market.reputation``)."""

    score: float  # in [0, 1]; a provider never dealt with has the neutral prior (0.5)
    newcomer: bool  # too little evidence yet: favoured in exploratory placements
    distrusted: bool  # ranked after every other fitting provider
    counts: dict[str, int]  # reputation.Event value -> how many (not decayed)
    latency: float | None  # mean seconds from asking to the lease; None if never leased
    last_at: float | None  # the latest event (unix time); None if none


class PeerView(TypedDict):
    peer_id: str
    addrs: list[str]
    # The peer's latest advert, protocol.messages.Advert fields (gpus as a list
    # of {uuid, model, memory, compute_capability}); None if none seen yet.
    advert: dict[str, Value] | None
    reputation: NotRequired[ReputationView]  # on a node that places jobs


class ObservationView(TypedDict):
    event: str  # reputation.Event value
    task_id: str
    at: float
    latency: float | None  # seconds from asking to the lease (leased events only)


class PeerHistoryView(TypedDict):
    """``peerd peer ID``: one provider, its advert if live, its reputation and history."""

    peer_id: str
    addrs: list[str]
    advert: dict[str, Value] | None
    reputation: ReputationView
    history: list[ObservationView]  # newest first


class AttemptView(TypedDict):
    provider: str
    outcome: str  # e.g. rejected, unreachable, failed, succeeded
    reason: str  # a RejectCode or short machine-readable reason; "" if none
    detail: str


class ReceiptView(TypedDict):
    task_id: str
    provider: str
    requester: str
    cost: float
    state: str  # TaskState value
    verified: bool  # both signatures checked against the peer IDs
    cosigned: str  # hex of the encoded co-signed protocol Receipt
    finished_at: NotRequired[float]  # the signed terms' finished_at (unix time)


class ReplicaView(TypedDict):
    """One replica of a verified job: what its provider returned and signed."""

    task_id: str
    provider: str | None  # None if it was never placed
    state: str  # TaskState value
    output_id: str | None  # the output manifest id it returned; None without a result
    exit_code: int | None
    verdict: str | None  # verified | disputed | inconclusive (reputation.Event); None: none recorded
    receipt: ReceiptView | None  # the co-signed receipt, as evidence


class VerificationView(TypedDict):
    """``submit --replicas K``: how the replicas compared (``peerd.jobs.verification``)."""

    mode: str  # replicas
    state: str  # pending | verified | majority | disputed | unverified
    group_id: str  # the group's id: its first replica's task id
    size: int  # K
    replicas: list[ReplicaView]


class RankView(TypedDict):
    """One rank of a gang job: where it ran and how it ended."""

    rank: int
    task_id: str  # the rank's own task (its lease, result and receipt)
    provider: str | None
    state: str  # TaskState value
    exit_code: int | None
    stdout: str
    stderr: str
    receipt: ReceiptView | None


class QueueView(TypedDict):
    """A requester's task waiting for room (state ``queued``): its place among ours and since when."""

    position: int | None  # 1 = placed next; None while it is trying
    priority: int
    queued_at: float | None  # when it first waited (wall clock)
    deadline: float  # it ends not_placed if still without room then (wall clock)


class TaskView(TypedDict):
    task_id: str
    state: str  # TaskState value
    exit_code: int | None
    stdout: str  # utf-8, invalid bytes replaced
    stderr: str
    provider: str | None
    attempts: list[AttemptView]
    receipt: ReceiptView | None
    created_at: float
    updated_at: float
    spec: dict[str, Value]  # JobSpec.to_wire()
    role: str  # requester | provider: which side of the task this node is
    detail: str
    verification: NotRequired[VerificationView]  # a replica group's (submit --replicas K)
    ranks: NotRequired[list[RankView]]  # a gang's (submit --nodes N), by rank
    queue: NotRequired[QueueView]  # a requester's task still to be placed


class LogChunkView(TypedDict):
    """A piece of a task's output. Where the daemon no longer holds chunks a reader has not
    seen, it sends one ``stderr`` chunk ``[... N log chunks dropped ...]\\n`` in their place."""

    stream: str  # stdout | stderr
    data: bytes


class EventView(TypedDict):
    task_id: str
    state: str  # TaskState value
    detail: str
    at: float


class CancelView(TypedDict):
    task_id: str
    state: str  # the state after the cancel request
    detail: str


class DoctorCheck(TypedDict):
    name: str
    ok: bool
    detail: str


class DrainView(TypedDict):
    draining: bool
    tasks_running: int
    detail: str


# ---------------------------------------------------------------- the interface
class NodeOps(Protocol):
    """The node, as the control socket sees it."""

    async def status(self) -> StatusView: ...

    async def peers(self) -> list[PeerView]: ...

    async def peer(self, peer_id: str, limit: int) -> PeerHistoryView:
        """One peer's advert, reputation and its ``limit`` latest reputation events."""
        ...

    async def submit(
        self, spec: JobSpec, *, local: bool, inputs: Sequence[tuple[str, str]] = (), replicas: int = 1,
        spot_check: float = 0.0, image_from_requester: bool = False, queue: Queueing = NODE_DEFAULT,
    ) -> str:
        """Record the task and return its ID at once; placement runs in the background.

        ``local``: run it on this node's own provider, not on the network. ``inputs``: (local path,
        container path) pairs; the daemon stores each file or directory as job data first and the
        spec names them (``BadArgs`` naming a path it cannot read).
        ``replicas``: run it on that many distinct providers and compare (the ID is the group's).
        ``spot_check``: with this probability, run it on a second provider too and compare.
        ``image_from_requester``: carry the image from this node's dockerd as job data (it is carried
        unasked when this dockerd holds it and no registry does).
        ``queue``: how long it may wait (``queued``) for a provider with room, and its priority.
        """
        ...

    def outputs(self, task_id: str) -> AsyncIterator[dict[str, Value]]:
        """The task's outputs, fetched from its provider if need be: first ``{manifest: bytes (the
        output manifest), id: "sha256:…", size, files, fetched: bytes moved now}``, then ``{data:
        bytes}`` pieces of the files in manifest order. ``failed`` saying why when there are none
        (no receipt yet, nothing in /out, provider unreachable, no longer kept)."""
        ...

    async def wait(self, task_id: str) -> TaskView:
        """Return the task's view once it reaches a final state (a replica group's: once every
        replica did, the result that stands for the group, with ``verification``)."""
        ...

    async def task(self, task_id: str) -> TaskView | None: ...

    async def tasks(self, limit: int) -> list[TaskView]:
        """The ``limit`` most recent tasks, newest first."""
        ...

    def logs(self, task_id: str, follow: bool) -> AsyncIterator[LogChunkView]:
        """Output so far; with ``follow``, then new output until the task ends."""
        ...

    def events(self, task_id: str) -> AsyncIterator[EventView]:
        """State changes of the task, ending after its final state."""
        ...

    async def cancel(self, task_id: str) -> CancelView: ...

    async def receipts(self, limit: int) -> list[ReceiptView]: ...

    async def doctor(self) -> list[DoctorCheck]: ...

    async def drain(self) -> DrainView: ...
