"""Test helpers: fixed keys, sample messages and a pair of negotiation machines.

``MachinePair`` plays h11's ConnectionPair: a requester and a provider
machine wired back to back; ``pair.send(side, msg_or_bytes)`` hands what one
side sends to the other and returns the events the other side got.
"""

from __future__ import annotations

from protocol import signing
from protocol.codec import frame
from protocol.messages import (
    Accept,
    Advert,
    Cancel,
    GpuOffer,
    JobSpec,
    Lease,
    LeaseTerms,
    LogChunk,
    LogStream,
    Message,
    NodeRole,
    Offer,
    Receipt,
    ReceiptTerms,
    Reject,
    RejectCode,
    Result,
    Resume,
    Status,
    TaskRequest,
    TaskState,
)
from protocol.negotiation import (
    NEED_DATA,
    Event,
    Negotiation,
    ProviderNegotiation,
    RequesterNegotiation,
    State,
    TaskRole,
)

REQUESTER_SEED = bytes(range(32))
PROVIDER_SEED = bytes(range(32, 64))
OTHER_SEED = bytes(range(64, 96))
TASK_ID = "task-1"
NOW = 1_700_000_000.0


def requester_signer() -> signing.Signer:
    return signing.Signer.from_seed(REQUESTER_SEED)


def provider_signer() -> signing.Signer:
    return signing.Signer.from_seed(PROVIDER_SEED)


def other_signer() -> signing.Signer:
    return signing.Signer.from_seed(OTHER_SEED)


def sample_spec() -> JobSpec:
    return JobSpec(
        image="peerd-test/busybox:1",
        command=("sh", "-c", "echo hi"),
        env={"A": "1"},
        cpus=1.0,
        memory=64 << 20,
        gpus=1,
        timeout=60.0,
        max_price=10.0,
    )


def sample_advert(peer_id: str, *, seq: int = 1, issued_at: float = NOW) -> Advert:
    gpus = (
        GpuOffer(uuid="GPU-0", model="NVIDIA H100", memory=80 << 30, compute_capability="9.0"),
        GpuOffer(uuid="GPU-1", model="NVIDIA H100", memory=80 << 30, compute_capability="9.0"),
    )
    return Advert(
        peer_id=peer_id, seq=seq, issued_at=issued_at, expires_at=issued_at + 60.0,
        role=NodeRole.PROVIDER, addrs=("/ip4/127.0.0.1/tcp/4001",), version="0.1.0",
        cpus=8.0, memory=32 << 30, disk=100 << 30, gpus=gpus, free_cpus=6.0,
        free_memory=16 << 30, free_gpus=("GPU-1",), queue_depth=0, running=1,
        price_cpu_hour=0.5, price_gpu_hour=2.0, docker=True, gpu_runtime=True,
        network=False, max_timeout=3600.0, draining=False,
    )


def sample_offer(task_id: str = TASK_ID) -> Offer:
    return Offer(task_id=task_id, price=2.5, expires_at=NOW + 30, cpus=1.0, memory=64 << 20, gpus=("GPU-1",))


def sample_result(task_id: str = TASK_ID, state: TaskState = TaskState.SUCCEEDED) -> Result:
    return Result(
        task_id=task_id, state=state, exit_code=0, stdout=b"hi\n", stderr=b"",
        output_digest=signing.digest(b""), output_size=0, wall_time=1.5, gpu_seconds=1.5, detail="",
    )


def sample_status(task_id: str = TASK_ID) -> Status:
    return Status(task_id=task_id, state=TaskState.RUNNING, detail="started", at=NOW + 2)


def sample_log(task_id: str = TASK_ID, seq: int = 0) -> LogChunk:
    return LogChunk(task_id=task_id, stream=LogStream.STDOUT, seq=seq, data=b"hi\n")


class MachinePair:
    """A requester and a provider machine talking to each other in memory."""

    def __init__(self) -> None:
        self.requester_signer = requester_signer()
        self.provider_signer = provider_signer()
        self.requester = RequesterNegotiation(self.requester_signer, self.provider_signer.peer_id)
        self.provider = ProviderNegotiation(self.provider_signer, self.requester_signer.peer_id)

    def machine(self, role: TaskRole) -> Negotiation:
        return self.requester if role is TaskRole.REQUESTER else self.provider

    def other(self, role: TaskRole) -> Negotiation:
        return self.provider if role is TaskRole.REQUESTER else self.requester

    def deliver(self, to: TaskRole, data: bytes) -> list[Event]:
        """Feed ``data`` to ``to`` and collect its events up to NEED_DATA."""
        machine = self.machine(to)
        machine.receive_data(data)
        events: list[Event] = []
        while (event := machine.next_event()) is not NEED_DATA:
            events.append(event)
            if not isinstance(event, Message):
                break
        return events

    def send(self, sender: TaskRole, msg: Message | bytes) -> list[Event]:
        """``sender`` sends ``msg`` (or bytes its machine produced); the other side receives."""
        data = msg if isinstance(msg, bytes) else self.machine(sender).send(msg)
        return self.deliver(TaskRole.PROVIDER if sender is TaskRole.REQUESTER else TaskRole.REQUESTER, data)

    def raw(self, sender: TaskRole, msg: Message) -> bytes:
        """A correctly signed frame of ``msg`` that bypasses the sender's machine."""
        signer = self.requester_signer if sender is TaskRole.REQUESTER else self.provider_signer
        return frame(signing.seal_bytes(msg, signer))

    def states(self) -> tuple[State, State]:
        return self.requester.state, self.provider.state

    # ------------------------------------------------------------ the happy path, step by step
    def request(self) -> None:
        self.send(TaskRole.REQUESTER, self.requester.send_request(TASK_ID, sample_spec(), now=NOW))

    def offer(self) -> None:
        self.send(TaskRole.PROVIDER, sample_offer())

    def accept(self) -> None:
        self.send(TaskRole.REQUESTER, self.requester.accept(now=NOW))

    def propose_lease(self) -> None:
        terms = self.provider.draft_lease(issued_at=NOW + 1, expires_at=NOW + 3600)
        self.send(TaskRole.PROVIDER, self.provider.propose_lease(terms))

    def countersign_lease(self) -> None:
        self.send(TaskRole.REQUESTER, self.requester.countersign_lease())

    def result(self, state: TaskState = TaskState.SUCCEEDED) -> None:
        self.send(TaskRole.PROVIDER, sample_result(state=state))

    def propose_receipt(self) -> None:
        terms = self.provider.draft_receipt(
            stdout_digest=signing.digest(b"hi\n"), stderr_digest=signing.digest(b""),
            cost=0.01, finished_at=NOW + 10,
        )
        self.send(TaskRole.PROVIDER, self.provider.propose_receipt(terms))

    def countersign_receipt(self) -> None:
        self.send(TaskRole.REQUESTER, self.requester.countersign_receipt())

    def cancel(self) -> None:
        self.send(TaskRole.REQUESTER, self.requester.cancel("changed my mind"))

    def reject(self) -> None:
        self.send(TaskRole.PROVIDER, self.provider.reject(RejectCode.BUSY, "try later"))

    def resume(self, lease: Lease, log_seq: int = 0) -> None:
        self.send(TaskRole.REQUESTER, self.requester.resume(lease, log_seq))
        self.provider.attach_lease(lease)


def leased_pair() -> MachinePair:
    pair = MachinePair()
    for step in (pair.request, pair.offer, pair.accept, pair.propose_lease, pair.countersign_lease):
        step()
    return pair


def signed_lease() -> Lease:
    """A lease both fixed parties signed, for resume tests."""
    lease = leased_pair().requester.lease
    assert lease is not None
    return lease


# How to reach each state (ERROR aside) from a fresh pair.
PATHS: dict[State, tuple[str, ...]] = {
    State.IDLE: (),
    State.REQUESTED: ("request",),
    State.OFFERED: ("request", "offer"),
    State.ACCEPTED: ("request", "offer", "accept"),
    State.LEASE_PROPOSED: ("request", "offer", "accept", "propose_lease"),
    State.LEASED: ("request", "offer", "accept", "propose_lease", "countersign_lease"),
    State.CANCELLING: ("request", "offer", "accept", "propose_lease", "countersign_lease", "cancel"),
    State.RESULT: ("request", "offer", "accept", "propose_lease", "countersign_lease", "result"),
    State.RECEIPT_PROPOSED: (
        "request", "offer", "accept", "propose_lease", "countersign_lease", "result", "propose_receipt",
    ),
    State.DONE: (
        "request", "offer", "accept", "propose_lease", "countersign_lease", "result",
        "propose_receipt", "countersign_receipt",
    ),
    State.REJECTED: ("request", "reject"),
    State.CANCELLED: ("request", "offer", "cancel"),
    State.RESUMING: ("resume",),
}


def pair_in(state: State) -> MachinePair:
    """A fresh pair with both machines in ``state``."""
    lease = signed_lease() if state is State.RESUMING else None
    pair = MachinePair()
    for step in PATHS[state]:
        if step == "resume":
            assert lease is not None
            pair.resume(lease)
        else:
            getattr(pair, step)()
    assert pair.states() == (state, state), pair.states()
    return pair


def sample_message(pair: MachinePair, msg_type: str) -> Message:
    """A well-formed message of ``msg_type`` for ``pair``'s task (legal or not)."""
    lease_terms = LeaseTerms(
        task_id=TASK_ID, requester=pair.requester_signer.peer_id, provider=pair.provider_signer.peer_id,
        spec=sample_spec(), price=2.5, gpus=("GPU-1",), issued_at=NOW, expires_at=NOW + 60,
    )
    receipt_terms = ReceiptTerms(
        task_id=TASK_ID, requester=pair.requester_signer.peer_id, provider=pair.provider_signer.peer_id,
        lease_digest=signing.digest(b"x"), state=TaskState.SUCCEEDED, exit_code=0, stdout_digest="",
        stderr_digest="", output_digest="", output_size=0, wall_time=1.0, gpu_seconds=0.0, price=2.5,
        cost=0.1, finished_at=NOW,
    )
    samples: dict[str, Message] = {
        TaskRequest.TYPE: TaskRequest(
            task_id=TASK_ID, requester=pair.requester_signer.peer_id, spec=sample_spec(), sent_at=NOW
        ),
        Resume.TYPE: Resume(task_id=TASK_ID, lease_digest=signing.digest(b"x"), log_seq=0),
        Offer.TYPE: sample_offer(),
        Reject.TYPE: Reject(task_id=TASK_ID, code=RejectCode.BUSY, detail=""),
        Accept.TYPE: Accept(task_id=TASK_ID, price=2.5),
        Lease.TYPE: signing.propose(lease_terms, Lease, pair.provider_signer, as_provider=True),
        Status.TYPE: sample_status(),
        LogChunk.TYPE: sample_log(),
        Result.TYPE: sample_result(),
        Cancel.TYPE: Cancel(task_id=TASK_ID, reason=""),
        Receipt.TYPE: signing.propose(receipt_terms, Receipt, pair.provider_signer, as_provider=True),
        Advert.TYPE: sample_advert(pair.provider_signer.peer_id),
    }
    return samples[msg_type]
