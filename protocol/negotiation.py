"""The task negotiation on ``/peerd/task/1.0.0``, as sans-IO state machines.

Rules
=====

Rule 1: everything that decides whether a message may be sent or received
lives in this file (the transition table first) and in
``protocol.negotiation_checks`` (the per-message checks, pure functions). The
machine never does I/O and never reads the clock; callers pass ``now`` where
time matters.

Rule 2: both sides run the same table and the same checks. A message we are
about to send that breaks them raises ``LocalProtocolError`` (nothing is sent
and the machine is unchanged); a received message that breaks them raises
``RemoteProtocolError`` naming the side that broke the protocol, and the
machine moves to ERROR for good.

Wire
----
Every frame (``codec.frame``) holds one encoded ``Envelope`` (``signing.seal``)
signed by its sender; the remote's envelopes must be signed by the peer ID
the transport authenticated. The envelope's payload is one message:

    R→P  TaskRequest                 IDLE            → REQUESTED
    R→P  Resume                      IDLE            → RESUMING
    P→R  Offer | Reject              REQUESTED       → OFFERED | REJECTED
    R→P  Accept | Cancel             OFFERED         → ACCEPTED | CANCELLED
    P→R  Lease (provider-signed) | Reject
                                     ACCEPTED        → LEASE_PROPOSED | REJECTED
    R→P  Lease (both signed) | Cancel
                                     LEASE_PROPOSED  → LEASED | CANCELLED
    P→R  Status, LogChunk            LEASED          → LEASED
    R→P  Cancel                      LEASED          → CANCELLING
    P→R  Status, LogChunk            CANCELLING      → CANCELLING
    P→R  Result                      LEASED, CANCELLING → RESULT
    P→R  Status, LogChunk | Result | Reject
                                     RESUMING        → LEASED | RESULT | REJECTED
    P→R  Receipt (provider-signed)   RESULT          → RECEIPT_PROPOSED
    R→P  Receipt (both signed)       RECEIPT_PROPOSED → DONE
    R→P  Cancel (crossing)           RESULT          → RESULT
    R→P  Cancel (crossing)           RECEIPT_PROPOSED → RECEIPT_PROPOSED

This table is ``TRANSITIONS`` and ``CROSSING`` below, and protocol/README.md
holds it too; tests/protocol/test_negotiation_docs.py checks both copies.

DONE, REJECTED, CANCELLED and ERROR are terminal: nothing more may be sent or
received. Closing the stream is not a message: ``next_event`` returns CLOSED
in any state and the caller decides (a requester that loses a leased task's
stream reconnects with Resume).

Crossing messages: after the lease both sides may send at once, so a Cancel
the requester sent in LEASED can reach a provider that has already sent its
Result (RESULT or RECEIPT_PROPOSED). Such a Cancel is accepted on receipt and
changes nothing (the rows marked crossing, table ``CROSSING``); the requester
cannot send one there.

Checks beyond the table, applied to both sides (``Negotiation._check_and_record``, with the
pure functions of ``protocol.negotiation_checks``, whose docstring lists them).

Time: the machine holds no clock. An offer has expired once ``now >=
expires_at`` (``offer_expired(now)``, the one rule for both sides):
``RequesterNegotiation.accept(now=...)`` refuses an expired offer; a provider
receiving Accept asks ``offer_expired(now)`` and answers
``Reject(OFFER_EXPIRED)`` if so.

Building: every message the machine can build has a helper that builds,
checks, signs and frames it (``send_request``, ``accept``, ``cancel``,
``countersign_*``, ``resume``; ``send_offer``, ``reject``, ``draft_lease`` +
``propose_lease``, ``send_status``, ``draft_receipt`` + ``propose_receipt``).
The terms of a lease or receipt come from ``protocol.terms`` only; ``send``
takes a message made elsewhere (a provider's job makes its log chunks,
Result and Receipt proposal apart from any stream).

Errors carry a ``code``: ``unexpected_message`` (not in the table),
``invalid_message`` (a check above), ``bad_signature``, ``malformed`` or
``frame_too_large`` (from signing and codec). After a RemoteProtocolError the
machine is in ERROR: ``next_event`` raises again and ``send`` refuses; close
the stream. A LocalProtocolError from ``send`` or a helper changes nothing.
"""

from __future__ import annotations

import enum

from . import negotiation_checks as checks, signing
from .codec import CLOSED, DEFAULT_MAX_FRAME, NEED_DATA, FrameDecoder, Sentinel, frame
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .messages import (
    Accept,
    Cancel,
    GangRef,
    JobSpec,
    Lease,
    LeaseTerms,
    LogChunk,
    Message,
    Offer,
    OverlayEndpoint,
    Receipt,
    ReceiptTerms,
    Reject,
    RejectCode,
    Result,
    Resume,
    RosterMember,
    Status,
    TaskRequest,
    TaskState,
)
from .roles import TaskRole as TaskRole
from .terms import make_lease_terms, make_receipt_terms

TASK_PROTOCOL = "/peerd/task/1.0.0"


class State(enum.StrEnum):
    IDLE = "IDLE"
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    LEASE_PROPOSED = "LEASE_PROPOSED"
    LEASED = "LEASED"
    CANCELLING = "CANCELLING"
    RESUMING = "RESUMING"
    RESULT = "RESULT"
    RECEIPT_PROPOSED = "RECEIPT_PROPOSED"
    DONE = "DONE"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    ERROR = "ERROR"


_R, _P = TaskRole.REQUESTER, TaskRole.PROVIDER
_S = State

# (state, sender, message TYPE) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[State, TaskRole, str], State] = {
    (_S.IDLE, _R, TaskRequest.TYPE): _S.REQUESTED,
    (_S.IDLE, _R, Resume.TYPE): _S.RESUMING,
    (_S.REQUESTED, _P, Offer.TYPE): _S.OFFERED,
    (_S.REQUESTED, _P, Reject.TYPE): _S.REJECTED,
    (_S.OFFERED, _R, Accept.TYPE): _S.ACCEPTED,
    (_S.OFFERED, _R, Cancel.TYPE): _S.CANCELLED,
    (_S.ACCEPTED, _P, Lease.TYPE): _S.LEASE_PROPOSED,
    (_S.ACCEPTED, _P, Reject.TYPE): _S.REJECTED,
    (_S.LEASE_PROPOSED, _R, Lease.TYPE): _S.LEASED,
    (_S.LEASE_PROPOSED, _R, Cancel.TYPE): _S.CANCELLED,
    (_S.LEASED, _P, Status.TYPE): _S.LEASED,
    (_S.LEASED, _P, LogChunk.TYPE): _S.LEASED,
    (_S.LEASED, _P, Result.TYPE): _S.RESULT,
    (_S.LEASED, _R, Cancel.TYPE): _S.CANCELLING,
    (_S.CANCELLING, _P, Status.TYPE): _S.CANCELLING,
    (_S.CANCELLING, _P, LogChunk.TYPE): _S.CANCELLING,
    (_S.CANCELLING, _P, Result.TYPE): _S.RESULT,
    (_S.RESUMING, _P, Status.TYPE): _S.LEASED,
    (_S.RESUMING, _P, LogChunk.TYPE): _S.LEASED,
    (_S.RESUMING, _P, Result.TYPE): _S.RESULT,
    (_S.RESUMING, _P, Reject.TYPE): _S.REJECTED,
    (_S.RESULT, _P, Receipt.TYPE): _S.RECEIPT_PROPOSED,
    (_S.RECEIPT_PROPOSED, _R, Receipt.TYPE): _S.DONE,
}

# Legal only on receipt: sent by the peer before it saw our last message.
CROSSING: dict[tuple[State, TaskRole, str], State] = {
    (_S.RESULT, _R, Cancel.TYPE): _S.RESULT,
    (_S.RECEIPT_PROPOSED, _R, Cancel.TYPE): _S.RECEIPT_PROPOSED,
}

TERMINAL = frozenset({_S.DONE, _S.REJECTED, _S.CANCELLED, _S.ERROR})

# Every message type that may appear on the task stream.
STREAM_MESSAGES: tuple[type[Message], ...] = (
    TaskRequest, Resume, Offer, Reject, Accept, Lease, Status, LogChunk, Result, Cancel, Receipt,
)

Event = Message | Sentinel
def _remote(exc: ProtocolError) -> RemoteProtocolError:
    if isinstance(exc, RemoteProtocolError):
        return exc
    return RemoteProtocolError(str(exc), code=exc.code)


class Negotiation:
    """One side of one task stream. See the module docstring for the rules.

    What the machine recorded (``request``, ``offer``, ``lease``, ...) is read-only from outside:
    only a message that passed the checks is recorded.
    """

    def __init__(
        self,
        role: TaskRole,
        signer: signing.Signer,
        peer_id: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.role = TaskRole(role)
        self.signer = signer
        self.peer_id = peer_id
        self.max_frame = max_frame
        self._frames = FrameDecoder(max_frame)
        self._state = State.IDLE
        self._error: RemoteProtocolError | None = None
        self._unreported = False
        self._task_id: str | None = None
        self._last_envelope: bytes | None = None
        self._request: TaskRequest | None = None
        self._resumed: Resume | None = None
        self._offer: Offer | None = None
        self._accepted: Accept | None = None
        self._rejection: Reject | None = None
        self._lease_terms: LeaseTerms | None = None
        self._proposed_lease: Lease | None = None
        self._lease: Lease | None = None
        self._result: Result | None = None
        self._receipt_terms: ReceiptTerms | None = None
        self._proposed_receipt: Receipt | None = None
        self._receipt: Receipt | None = None
        self._cancel_requested = False

    # ------------------------------------------------------------ properties
    @property
    def state(self) -> State:
        return self._state

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @property
    def their_role(self) -> TaskRole:
        return _P if self.role is _R else _R

    @property
    def requester_id(self) -> str:
        return self.signer.peer_id if self.role is _R else self.peer_id

    @property
    def provider_id(self) -> str:
        return self.signer.peer_id if self.role is _P else self.peer_id

    def offer_expired(self, now: float) -> bool:
        """True if there is an offer and ``now`` is at or past its expiry (the one expiry rule)."""
        return self._offer is not None and now >= self._offer.expires_at

    # ------------------------------------------------------------ what was recorded
    @property
    def last_envelope(self) -> bytes | None:
        """The raw envelope of the last message received (e.g. a signed Reject, kept as proof)."""
        return self._last_envelope

    @property
    def request(self) -> TaskRequest | None:
        return self._request

    @property
    def resumed(self) -> Resume | None:
        return self._resumed

    @property
    def offer(self) -> Offer | None:
        return self._offer

    @property
    def accepted(self) -> Accept | None:
        return self._accepted

    @property
    def rejection(self) -> Reject | None:
        return self._rejection

    @property
    def lease_terms(self) -> LeaseTerms | None:
        return self._lease_terms

    @property
    def proposed_lease(self) -> Lease | None:
        return self._proposed_lease

    @property
    def lease(self) -> Lease | None:
        """The lease both parties signed (or the stored one a Resume adopted)."""
        return self._lease

    @property
    def result(self) -> Result | None:
        return self._result

    @property
    def receipt_terms(self) -> ReceiptTerms | None:
        return self._receipt_terms

    @property
    def proposed_receipt(self) -> Receipt | None:
        return self._proposed_receipt

    @property
    def receipt(self) -> Receipt | None:
        """The receipt both parties signed."""
        return self._receipt

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    # ------------------------------------------------------------ I/O edges
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; ``b""`` means the remote closed it.

        Never raises: a broken frame header is reported by ``next_event``.
        """
        if self._state is State.ERROR:
            return
        try:
            self._frames.receive_data(data)
        except ProtocolError as exc:
            self._state, self._error, self._unreported = State.ERROR, _remote(exc), True

    def next_event(self) -> Event:
        """The next received message, NEED_DATA or CLOSED; raises RemoteProtocolError."""
        if self._error is not None:
            if self._unreported:
                self._unreported = False
                raise self._error
            raise RemoteProtocolError(
                f"negotiation already failed: {self._error}", code=self._error.code
            )
        try:
            payload = self._frames.next_frame()
            if payload is None:
                return CLOSED if self._frames.closed else NEED_DATA
            _, msg = signing.open_envelope(payload, expected_signer=self.peer_id)
            self._apply(msg, self.their_role)
        except ProtocolError as exc:
            self._state, self._error = State.ERROR, _remote(exc)
            raise self._error from None
        except checks.Violation as exc:
            self._state = State.ERROR
            self._error = RemoteProtocolError(str(exc), code=exc.code)
            raise self._error from None
        self._last_envelope = payload
        return msg

    def send(self, msg: Message) -> bytes:
        """Seal, check and frame ``msg``; raises LocalProtocolError if illegal now.

        The helpers below build each message from what the machine recorded; ``send`` itself is for
        a message made elsewhere (a provider's job makes its log chunks, Result and Receipt proposal).
        """
        if self._error is not None:
            raise LocalProtocolError(f"negotiation already failed: {self._error}")
        try:
            self._next_state(msg, self.role)  # cheap, and spares signing what cannot go
            data = frame(signing.seal_bytes(msg, self.signer), self.max_frame)
            self._apply(msg, self.role)
        except checks.Violation as exc:
            raise LocalProtocolError(str(exc), code=exc.code) from None
        return data

    # ------------------------------------------------------------ the table
    def _next_state(self, msg: Message, sender: TaskRole) -> State:
        key = (self._state, sender, msg.TYPE)
        new_state = TRANSITIONS.get(key)
        if new_state is None and sender is not self.role:
            new_state = CROSSING.get(key)
        if new_state is None:
            verb = "sent" if sender is not self.role else "may not send"
            raise checks.Violation(
                f"{sender} {verb} {msg.TYPE!r} in state {self._state}", "unexpected_message"
            )
        return new_state

    def _apply(self, msg: Message, sender: TaskRole) -> None:
        """Check ``msg`` from ``sender``; only if it passes, record it and move."""
        new_state = self._next_state(msg, sender)
        # Lease and Receipt carry the task_id inside their terms (checked below).
        task_id = getattr(msg, "task_id", self._task_id)
        if self._task_id is not None and task_id != self._task_id:
            raise checks.Violation(
                f"{sender}'s {msg.TYPE!r} is for task {task_id!r}, not {self._task_id!r}"
            )
        try:
            self._check_and_record(msg, sender)
        except checks.Violation as exc:
            raise checks.Violation(f"{sender}'s {msg.TYPE!r} in state {self._state}: {exc}", exc.code) from None
        self._task_id = task_id
        self._state = new_state

    # ------------------------------------------------------------ per-message checks
    def _check_and_record(self, msg: Message, sender: TaskRole) -> None:
        """Check first (``protocol.negotiation_checks``) and record last, so that a failed check changes nothing."""
        match msg:
            case TaskRequest():
                checks.check_request(msg, self.requester_id)
                self._request = msg
            case Resume():
                if self.role is _R:
                    checks.check_resume(msg, self._lease)
                self._resumed = msg
            case Offer():
                assert self._request is not None
                checks.check_offer(msg, self._request)
                self._offer = msg
            case Reject():
                self._rejection = msg
            case Accept():
                assert self._request is not None and self._offer is not None
                checks.check_accept(msg, self._request, self._offer, self.provider_id)
                self._accepted = msg
            case Lease():
                lease_terms = checks.check_cosigned(msg, sender, LeaseTerms, self._proposed_lease,
                                                    self._check_lease_terms)
                if sender is _P:
                    self._lease_terms, self._proposed_lease = lease_terms, msg
                else:
                    self._lease = msg
            case Status() | LogChunk() | Result():
                checks.check_leased_phase(msg, self._lease, self._resumed)
                if isinstance(msg, Result):
                    self._result = msg
            case Cancel():
                checks.require(not self._cancel_requested, "cancel sent twice")
                self._cancel_requested = True
            case Receipt():
                receipt_terms = checks.check_cosigned(msg, sender, ReceiptTerms, self._proposed_receipt,
                                                      self._check_receipt_terms)
                if sender is _P:
                    self._receipt_terms, self._proposed_receipt = receipt_terms, msg
                else:
                    self._receipt = msg
            case _:
                raise checks.Violation(f"{msg.TYPE!r} is not a task stream message", "unexpected_message")

    def _check_lease_terms(self, terms: LeaseTerms) -> None:
        assert self._request is not None and self._offer is not None and self._accepted is not None
        checks.check_parties(terms, self._task_id, self.requester_id, self.provider_id)
        checks.check_lease_terms(terms, self._request, self._offer, self._accepted)

    def _check_receipt_terms(self, terms: ReceiptTerms) -> None:
        lease, lease_terms, result = self._lease, self._lease_terms, self._result
        assert lease is not None and lease_terms is not None and result is not None
        checks.check_parties(terms, self._task_id, self.requester_id, self.provider_id)
        checks.check_receipt_terms(terms, lease, lease_terms, result)

    # ------------------------------------------------------------ shared helpers
    def _adopt_lease(self, lease: Lease) -> LeaseTerms:
        """Verify a stored, fully signed lease for this stream's parties."""
        try:
            terms = signing.verify_cosigned(lease, LeaseTerms)
        except ProtocolError as exc:
            raise LocalProtocolError(f"stored lease does not verify: {exc}") from exc
        if terms.requester != self.requester_id or terms.provider != self.provider_id:
            raise LocalProtocolError("stored lease is between other peers")
        return terms


class RequesterNegotiation(Negotiation):
    """The requester's side: opens the stream with ``send_request`` or ``resume``."""

    def __init__(
        self, signer: signing.Signer, peer_id: str, *, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        super().__init__(TaskRole.REQUESTER, signer, peer_id, max_frame=max_frame)

    def send_request(self, task_id: str, spec: JobSpec, *, now: float, gang: GangRef | None = None) -> bytes:
        """Send the TaskRequest for ``spec`` (``requester`` is our peer ID; ``gang`` for a gang's rank)."""
        return self.send(
            TaskRequest(task_id=task_id, requester=self.signer.peer_id, spec=spec, sent_at=now, gang=gang)
        )

    def resume(self, lease: Lease, log_seq: int = 0) -> bytes:
        """Re-attach to a leased task on a fresh stream (first message only)."""
        if self._state is not State.IDLE:
            raise LocalProtocolError(f"resume opens a stream; state is {self._state}")
        terms = self._adopt_lease(lease)
        msg = Resume(task_id=terms.task_id, lease_digest=signing.digest(lease.terms), log_seq=log_seq)
        self._lease, self._lease_terms = lease, terms
        try:
            return self.send(msg)
        except LocalProtocolError:
            self._lease = self._lease_terms = None
            raise

    def accept(self, *, now: float, roster: tuple[RosterMember, ...] = ()) -> bytes:
        """Accept the offer at its price (a gang member's: with the gang's ``roster``);
        LocalProtocolError(code="offer_expired") if too late."""
        if self._offer is None or self._task_id is None:
            raise LocalProtocolError(f"no offer to accept in state {self._state}")
        if self.offer_expired(now):
            raise LocalProtocolError("the offer has expired", code="offer_expired")
        return self.send(Accept(task_id=self._task_id, price=self._offer.price, roster=roster))

    def cancel(self, reason: str) -> bytes:
        if self._task_id is None:
            raise LocalProtocolError("nothing to cancel before the first message")
        return self.send(Cancel(task_id=self._task_id, reason=reason[:1024]))

    def countersign_lease(self) -> bytes:
        """Sign the proposed lease (after checking it on receipt) and send it; then it is ``lease``."""
        if self._proposed_lease is None or self._state is not State.LEASE_PROPOSED:
            raise LocalProtocolError(f"no lease proposal to countersign in state {self._state}")
        return self.send(signing.countersign(self._proposed_lease, self.signer, as_provider=False))

    def countersign_receipt(self) -> bytes:
        """Sign the proposed receipt and send it; the signed one is then ``receipt``."""
        if self._proposed_receipt is None or self._state is not State.RECEIPT_PROPOSED:
            raise LocalProtocolError(f"no receipt proposal to countersign in state {self._state}")
        return self.send(signing.countersign(self._proposed_receipt, self.signer, as_provider=False))


class ProviderNegotiation(Negotiation):
    """The provider's side: answers one TaskRequest or Resume."""

    def __init__(
        self, signer: signing.Signer, peer_id: str, *, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        super().__init__(TaskRole.PROVIDER, signer, peer_id, max_frame=max_frame)

    def reject(self, code: RejectCode, detail: str) -> bytes:
        if self._task_id is None:
            raise LocalProtocolError("nothing to reject before the first message")
        return self.send(Reject(task_id=self._task_id, code=code, detail=detail[:1024]))

    def send_offer(
        self, *, price: float, gpus: tuple[str, ...], expires_at: float, overlay: OverlayEndpoint | None = None
    ) -> bytes:
        """Offer the requested CPUs and memory, and ``gpus``, at ``price`` until ``expires_at``
        (a gang member's offer: with this lease's ``overlay`` key and endpoint)."""
        if self._request is None:
            raise LocalProtocolError(f"nothing to offer for in state {self._state}")
        spec = self._request.spec
        return self.send(
            Offer(
                task_id=self._request.task_id, price=price, expires_at=expires_at,
                cpus=spec.cpus, memory=spec.memory, gpus=gpus, overlay=overlay,
            )
        )

    def draft_lease(self, *, issued_at: float, expires_at: float) -> LeaseTerms:
        """LeaseTerms matching the request, the offer and the accepted price."""
        if self._request is None or self._offer is None or self._accepted is None:
            raise LocalProtocolError(f"nothing to lease in state {self._state}")
        return make_lease_terms(
            self._request, self._offer, self._accepted,
            provider=self.provider_id, issued_at=issued_at, expires_at=expires_at,
        )

    def propose_lease(self, terms: LeaseTerms) -> bytes:
        """Sign ``terms`` as the provider and send the Lease proposal."""
        return self.send(signing.propose(terms, Lease, self.signer, as_provider=True))

    def attach_lease(self, lease: Lease) -> None:
        """After receiving Resume: adopt the stored lease it names (or Reject instead)."""
        resumed = self._resumed
        if self._state is not State.RESUMING or resumed is None or self._lease is not None:
            raise LocalProtocolError(f"attach_lease answers a Resume; state is {self._state}")
        terms = self._adopt_lease(lease)
        if terms.task_id != resumed.task_id or signing.digest(lease.terms) != resumed.lease_digest:
            raise LocalProtocolError("the stored lease is not the one the requester resumes")
        self._lease, self._lease_terms = lease, terms

    def send_status(self, state: TaskState, detail: str, *, at: float) -> bytes:
        """A Status of the leased task (also the first answer to a Resume)."""
        if self._task_id is None:
            raise LocalProtocolError("no task to report on before the first message")
        return self.send(Status(task_id=self._task_id, state=state, detail=detail[:1024], at=at))

    def draft_receipt(
        self, *, stdout_digest: str, stderr_digest: str, cost: float, finished_at: float, staging_time: float = 0.0
    ) -> ReceiptTerms:
        """ReceiptTerms matching the lease and the Result already sent (``make_receipt_terms``)."""
        lease, lease_terms, result = self._lease, self._lease_terms, self._result
        if lease is None or lease_terms is None or result is None:
            raise LocalProtocolError(f"nothing to receipt in state {self._state}")
        return make_receipt_terms(
            lease, lease_terms, result,
            stdout_digest=stdout_digest, stderr_digest=stderr_digest, cost=cost, finished_at=finished_at,
            staging_time=staging_time,
        )

    def propose_receipt(self, terms: ReceiptTerms) -> bytes:
        """Sign ``terms`` as the provider and send the Receipt proposal."""
        return self.send(signing.propose(terms, Receipt, self.signer, as_provider=True))
