"""Chunk transfer (``/peerd/blob/1.0.0``, not yet on the wire) as sans-IO state machines.

A *fetcher* asks a *server* for chunks by SHA-256 digest; the server answers
each digest once, with the chunk or as missing. Chunks are content-addressed,
so frames are plain encoded messages (not sealed envelopes): the transport
authenticates the peer, the digest authenticates the data, and the server
decides from ``Want.task_id`` and the stream's peer whether to serve at all.

    F→S  blob_want                 IDLE → OPEN,  OPEN → OPEN
    S→F  blob_chunk | blob_missing OPEN → OPEN
    F→S  blob_done                 OPEN → DONE
    F→S  blob_error                IDLE, OPEN → FAILED
    S→F  blob_error                IDLE, OPEN → FAILED

DONE, FAILED and ERROR are terminal; bytes that arrive after are dropped (a
chunk crossing the fetcher's ``blob_error`` is harmless) and ``next_event``
returns CLOSED once the stream is closed.

Checks beyond the table, applied to what each side sends and receives:

- every ``blob_want`` names the task of the first one;
- a want asks for no digest already asked on this stream, and at most
  ``MAX_IN_FLIGHT`` digests are asked and not yet answered (code
  ``too_many_in_flight``);
- ``blob_chunk`` and ``blob_missing`` answer only digests asked and not yet
  answered; a chunk's data hashes to its digest (code ``bad_chunk``: the
  fetcher drops and records the peer) and is at most ``max_chunk`` bytes.
  Each chunk is hashed once per side: a received one on arrival (the fetcher's
  ``next_event`` returns it as a ``VerifiedChunk``), a sent one when the
  ``VerifiedChunk`` given to ``send_chunk`` was made (the server's chunk store
  makes it as it reads and re-hashes the chunk);
- ``blob_done`` only when nothing asked is unanswered.

Other codes: ``unexpected_message`` (not in the table), ``invalid_message``,
``malformed``/``frame_too_large`` (codec). After a RemoteProtocolError the
machine is in ERROR for good. Nothing here reads a clock or does I/O; a
transfer cut by a reset resumes on a new stream with
``BlobFetcher(task_id, old.missing)``, which asks only for what is missing.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from .codec import CLOSED, NEED_DATA, FrameDecoder, Sentinel, decode, encode, frame
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .manifest import DIGEST_SIZE, MAX_CHUNK_SIZE
from .schema import Message, check_text, fail

BLOB_PROTOCOL = "/peerd/blob/1.0.0"
MAX_WANT = 256  # digests in one blob_want or blob_missing
MAX_IN_FLIGHT = 64  # digests asked and not yet answered, per stream
DEFAULT_WINDOW = 16  # what a fetcher asks for at once, unless told otherwise
CHUNK_FRAME_OVERHEAD = 128  # a blob_chunk frame is at most max_chunk + this
SERVER_MAX_FRAME = 16 << 10  # what a server accepts: wants (≤ ~9 KiB), done, error


class BlobErrorCode(enum.StrEnum):
    """Why a side ends a transfer early."""

    NOT_AUTHORIZED = "not_authorized"  # the stream's peer is no party of the task's lease
    UNKNOWN_TASK = "unknown_task"
    BUSY = "busy"
    BAD_CHUNK = "bad_chunk"  # the fetcher got data that does not match its digest
    PROTOCOL_ERROR = "protocol_error"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


def _check_digests(obj: object, name: str, *, nonempty: bool) -> None:
    digests: tuple[bytes, ...] = getattr(obj, name)
    if nonempty and not digests:
        fail(type(obj), name, "must not be empty")
    if len(digests) > MAX_WANT:
        fail(type(obj), name, f"has more than {MAX_WANT} digests")
    if any(len(d) != DIGEST_SIZE for d in digests):
        fail(type(obj), name, f"holds a digest that is not {DIGEST_SIZE} bytes")
    if len(set(digests)) != len(digests):
        fail(type(obj), name, "lists a digest twice")


@dataclass(frozen=True, slots=True)
class Want(Message):
    """Fetcher → server: send these chunks of this task."""

    TYPE: ClassVar[str] = "blob_want"
    task_id: str
    digests: tuple[bytes, ...]

    def _check(self) -> None:
        check_text(self, "task_id", 64, nonempty=True)
        _check_digests(self, "digests", nonempty=True)


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    """Server → fetcher: one chunk; ``sha256(data) == digest`` (checked by the machines)."""

    TYPE: ClassVar[str] = "blob_chunk"
    digest: bytes
    data: bytes

    def _check(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            fail(type(self), "digest", f"must be {DIGEST_SIZE} bytes")
        if len(self.data) > MAX_CHUNK_SIZE:
            fail(type(self), "data", f"is larger than {MAX_CHUNK_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class VerifiedChunk(Chunk):
    """A ``blob_chunk`` whose data was hashed and found to match its digest when it was made.

    Making one is the check (``LocalProtocolError(code="bad_chunk")`` otherwise),
    so holding one is proof: the chunk store stores and serves these without
    hashing again, the fetcher's machine hands them out for each chunk it
    received (hashed once, on arrival), and the server's machine sends them
    without hashing again. A plain ``Chunk`` is always hashed.
    """

    def _check(self) -> None:
        Chunk._check(self)
        if hashlib.sha256(self.data).digest() != self.digest:
            raise LocalProtocolError(f"chunk data does not hash to {self.digest.hex()[:16]}", code="bad_chunk")


@dataclass(frozen=True, slots=True)
class Missing(Message):
    """Server → fetcher: these asked chunks will not come from this server."""

    TYPE: ClassVar[str] = "blob_missing"
    digests: tuple[bytes, ...]

    def _check(self) -> None:
        _check_digests(self, "digests", nonempty=True)


@dataclass(frozen=True, slots=True)
class Done(Message):
    """Fetcher → server: nothing more is wanted; the stream ends cleanly."""

    TYPE: ClassVar[str] = "blob_done"


@dataclass(frozen=True, slots=True)
class BlobError(Message):
    """Either side: the transfer ends early, with a reason."""

    TYPE: ClassVar[str] = "blob_error"
    code: BlobErrorCode
    detail: str

    def _check(self) -> None:
        check_text(self, "detail", 1024)


BLOB_MESSAGES: dict[str, type[Message]] = {cls.TYPE: cls for cls in (Want, Chunk, Missing, Done, BlobError)}


class Role(enum.StrEnum):
    FETCHER = "fetcher"
    SERVER = "server"


class State(enum.StrEnum):
    IDLE = "IDLE"
    OPEN = "OPEN"
    DONE = "DONE"
    FAILED = "FAILED"
    ERROR = "ERROR"


_F, _S = Role.FETCHER, Role.SERVER

# (state, sender, message TYPE) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[State, Role, str], State] = {
    (State.IDLE, _F, Want.TYPE): State.OPEN,
    (State.OPEN, _F, Want.TYPE): State.OPEN,
    (State.OPEN, _S, Chunk.TYPE): State.OPEN,
    (State.OPEN, _S, Missing.TYPE): State.OPEN,
    (State.OPEN, _F, Done.TYPE): State.DONE,
    (State.IDLE, _F, BlobError.TYPE): State.FAILED,
    (State.OPEN, _F, BlobError.TYPE): State.FAILED,
    (State.IDLE, _S, BlobError.TYPE): State.FAILED,
    (State.OPEN, _S, BlobError.TYPE): State.FAILED,
}

TERMINAL = frozenset({State.DONE, State.FAILED, State.ERROR})

Event = Message | Sentinel


class _Violation(Exception):
    def __init__(self, message: str, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.code = code


def _require(ok: bool, why: str, code: str = "invalid_message") -> None:
    if not ok:
        raise _Violation(why, code)


class BlobTransfer:
    """One side of one blob stream; the subclasses add what each side does."""

    role: ClassVar[Role]

    def __init__(self, *, max_frame: int, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        if not 0 < max_chunk <= MAX_CHUNK_SIZE:
            raise LocalProtocolError(f"max_chunk must be in [1, {MAX_CHUNK_SIZE}], got {max_chunk}")
        self.max_chunk = max_chunk
        self.max_frame = max_frame
        self._frames = FrameDecoder(max_frame)
        self._state = State.IDLE
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._unreported = False
        self._task_id: str | None = None
        self._pending: dict[bytes, None] = {}  # asked, not yet answered, in asking order
        self._asked: set[bytes] = set()  # everything asked on this stream
        self.error: BlobError | None = None  # the blob_error that ended the transfer, either way
        self._verified: VerifiedChunk | None = None  # the chunk just checked, as next_event returns it

    @property
    def state(self) -> State:
        return self._state

    @property
    def task_id(self) -> str | None:
        return self._task_id

    @property
    def pending(self) -> tuple[bytes, ...]:
        """Digests asked and not yet answered, oldest first."""
        return tuple(self._pending)

    @property
    def ready_bytes(self) -> int:
        """The size of the complete frame the next ``next_event`` will decode (and, for a chunk, hash); 0 if none.

        Lets the caller run a ``next_event`` that has a large chunk to hash off
        its event loop (the machine does no I/O: any one thread may drive it).
        """
        return 0 if self._error is not None or self._state in TERMINAL else self._frames.ready

    @property
    def their_role(self) -> Role:
        return _S if self.role is _F else _F

    # ------------------------------------------------------------ I/O edges
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; ``b""`` means the remote closed it. Never raises."""
        if not data:
            self._eof = True
        if self._state in TERMINAL:
            return  # bytes crossing our end of the transfer are dropped
        try:
            self._frames.receive_data(data)
        except ProtocolError as exc:
            self._fail(exc)

    def next_event(self) -> Event:
        """The next received message, NEED_DATA or CLOSED; raises RemoteProtocolError."""
        if self._error is not None:
            if self._unreported:
                self._unreported = False
                raise self._error
            raise RemoteProtocolError(f"transfer already failed: {self._error}", code=self._error.code)
        if self._state in TERMINAL:
            return CLOSED if self._eof else NEED_DATA
        try:
            payload = self._frames.next_frame()
            if payload is None:
                return CLOSED if self._frames.closed else NEED_DATA
            msg = decode(payload, BLOB_MESSAGES)
            self._verified = None
            self._apply(msg, self.their_role)
            if isinstance(msg, Chunk):  # handed out as checked: a VerifiedChunk, hashed once on arrival
                assert self._verified is not None and self._verified.digest == msg.digest
                msg, self._verified = self._verified, None
        except ProtocolError as exc:
            error = self._fail(exc)
            self._unreported = False
            raise error from None
        except _Violation as exc:
            error = self._fail(RemoteProtocolError(str(exc), code=exc.code))
            self._unreported = False
            raise error from None
        return msg

    def send(self, msg: Message) -> bytes:
        """Check and frame ``msg``; raises LocalProtocolError (nothing changes) if illegal now."""
        if self._error is not None:
            raise LocalProtocolError(f"transfer already failed: {self._error}")
        try:
            self._next_state(msg, self.role)
            data = encode(msg)
            limit = self.max_chunk + CHUNK_FRAME_OVERHEAD if isinstance(msg, Chunk) else SERVER_MAX_FRAME
            out = frame(data, limit)
            self._apply(msg, self.role)
        except _Violation as exc:
            raise LocalProtocolError(str(exc), code=exc.code) from None
        return out

    def abort(self, code: BlobErrorCode, detail: str = "") -> bytes:
        """End the transfer early with a ``blob_error``."""
        return self.send(BlobError(code=code, detail=detail[:1024]))

    def _fail(self, exc: ProtocolError) -> RemoteProtocolError:
        """Move to ERROR for good; the error is raised now or by the next ``next_event``."""
        error = exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(str(exc), code=exc.code)
        self._state, self._error, self._unreported = State.ERROR, error, True
        return error

    # ------------------------------------------------------------ the table
    def _next_state(self, msg: Message, sender: Role) -> State:
        new_state = TRANSITIONS.get((self._state, sender, msg.TYPE))
        if new_state is None:
            verb = "sent" if sender is not self.role else "may not send"
            raise _Violation(f"{sender} {verb} {msg.TYPE!r} in state {self._state}", "unexpected_message")
        return new_state

    def _apply(self, msg: Message, sender: Role) -> None:
        """Check ``msg`` from ``sender``; only if it passes, record it and move."""
        new_state = self._next_state(msg, sender)
        try:
            _CHECKS[type(msg)](self, msg)
        except _Violation as exc:
            raise _Violation(f"{sender}'s {msg.TYPE!r} in state {self._state}: {exc}", exc.code) from None
        _RECORDS[type(msg)](self, msg)
        self._recorded(msg)
        self._state = new_state

    def _recorded(self, msg: Message) -> None:
        """A side's own bookkeeping after a message passed; override."""

    # ------------------------------------------------------------ checks (no changes)
    def _check_want(self, msg: Want) -> None:
        _require(self._task_id is None or msg.task_id == self._task_id,
                 f"want is for task {msg.task_id!r}, not {self._task_id!r}")
        _require(not any(d in self._asked for d in msg.digests), "asks for a digest already asked")
        _require(len(self._pending) + len(msg.digests) <= MAX_IN_FLIGHT,
                 f"more than {MAX_IN_FLIGHT} digests in flight", "too_many_in_flight")

    def _check_chunk(self, msg: Chunk) -> None:
        _require(msg.digest in self._pending, f"chunk {msg.digest.hex()[:16]} was not asked for")
        _require(len(msg.data) <= self.max_chunk, f"chunk of {len(msg.data)} bytes over {self.max_chunk}")
        if isinstance(msg, VerifiedChunk):
            return  # hashed when it was made; only our own sends can be one (decode makes plain Chunks)
        try:
            self._verified = VerifiedChunk(digest=msg.digest, data=msg.data)  # the one hash of this chunk
        except LocalProtocolError:
            raise _Violation(f"chunk data does not hash to {msg.digest.hex()[:16]}", "bad_chunk") from None

    def _check_missing(self, msg: Missing) -> None:
        _require(all(d in self._pending for d in msg.digests), "names a digest that was not asked for")

    def _check_done(self, msg: Done) -> None:
        _require(not self._pending, f"{len(self._pending)} digests still unanswered")

    def _check_error(self, msg: BlobError) -> None:
        pass

    # ------------------------------------------------------------ records
    def _record_want(self, msg: Want) -> None:
        self._task_id = msg.task_id
        self._pending.update(dict.fromkeys(msg.digests))
        self._asked.update(msg.digests)

    def _record_answer(self, msg: Chunk | Missing) -> None:
        for digest in (msg.digest,) if isinstance(msg, Chunk) else msg.digests:
            del self._pending[digest]

    def _record_nothing(self, msg: Message) -> None:
        pass

    def _record_error(self, msg: BlobError) -> None:
        self.error = msg


_CHECKS: dict[type[Message], Callable[[BlobTransfer, Message], None]] = {
    Want: BlobTransfer._check_want,  # type: ignore[dict-item]
    Chunk: BlobTransfer._check_chunk,  # type: ignore[dict-item]
    VerifiedChunk: BlobTransfer._check_chunk,  # type: ignore[dict-item]
    Missing: BlobTransfer._check_missing,  # type: ignore[dict-item]
    Done: BlobTransfer._check_done,  # type: ignore[dict-item]
    BlobError: BlobTransfer._check_error,  # type: ignore[dict-item]
}
_RECORDS: dict[type[Message], Callable[[BlobTransfer, Message], None]] = {
    Want: BlobTransfer._record_want,  # type: ignore[dict-item]
    Chunk: BlobTransfer._record_answer,  # type: ignore[dict-item]
    VerifiedChunk: BlobTransfer._record_answer,  # type: ignore[dict-item]
    Missing: BlobTransfer._record_answer,  # type: ignore[dict-item]
    Done: BlobTransfer._record_nothing,
    BlobError: BlobTransfer._record_error,  # type: ignore[dict-item]
}


class BlobFetcher(BlobTransfer):
    """Fetches ``wanted`` digests of one task, at most ``window`` in flight.

    Loop: write ``next_want()`` while it returns bytes; feed what arrives with
    ``receive_data``; each ``Chunk`` from ``next_event`` is a ``VerifiedChunk`` (store it),
    each ``Missing`` names digests this server will not send (try another);
    when ``complete`` (or nothing more can come), write ``finish()``.
    """

    role = Role.FETCHER

    def __init__(
        self, task_id: str, wanted: Iterable[bytes], *, max_chunk: int = MAX_CHUNK_SIZE,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        super().__init__(max_frame=max(max_chunk + CHUNK_FRAME_OVERHEAD, SERVER_MAX_FRAME), max_chunk=max_chunk)
        if not 0 < window <= MAX_IN_FLIGHT:
            raise LocalProtocolError(f"window must be in [1, {MAX_IN_FLIGHT}], got {window}")
        Want(task_id=task_id, digests=(bytes(DIGEST_SIZE),))  # the task id is checked now, not at the first want
        self.fetch_task = task_id
        self.window = window
        self.missing: dict[bytes, None] = {}  # wanted and not yet received, in order
        for digest in wanted:
            if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
                raise LocalProtocolError(f"a wanted digest is not {DIGEST_SIZE} bytes")
            self.missing[digest] = None
        self.unavailable: set[bytes] = set()  # this server answered "missing"
        self.received_bytes = 0

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def exhausted(self) -> bool:
        """Nothing is in flight and nothing more can be asked of this server."""
        return not self._pending and all(d in self.unavailable for d in self.missing)

    def next_want(self) -> bytes | None:
        """A framed want for what is missing and not yet asked, up to the window; None if none."""
        if self._state not in (State.IDLE, State.OPEN):
            return None
        room = min(self.window - len(self._pending), MAX_WANT)
        if room <= 0:
            return None
        batch = []
        for digest in self.missing:
            if digest not in self._asked:
                batch.append(digest)
                if len(batch) == room:
                    break
        if not batch:
            return None
        return self.send(Want(task_id=self.fetch_task, digests=tuple(batch)))

    def finish(self) -> bytes:
        """End the transfer cleanly (nothing may be in flight)."""
        return self.send(Done())

    def _recorded(self, msg: Message) -> None:
        if isinstance(msg, Chunk):
            self.missing.pop(msg.digest, None)
            self.received_bytes += len(msg.data)
        elif isinstance(msg, Missing):
            self.unavailable.update(msg.digests)


class BlobServer(BlobTransfer):
    """Serves one fetcher: each ``Want`` from ``next_event`` is answered digest by digest.

    Before the first answer the caller checks the stream's peer against the
    lease of ``Want.task_id`` (``abort(NOT_AUTHORIZED)`` if not a party);
    then for each digest in ``pending`` it sends ``send_chunk`` with data from
    the chunk store, or ``send_missing``.
    """

    role = Role.SERVER

    def __init__(self, *, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        super().__init__(max_frame=SERVER_MAX_FRAME, max_chunk=max_chunk)

    def send_chunk(self, chunk: VerifiedChunk) -> bytes:
        """Frame one asked chunk (verified when it was made: ``VerifiedChunk``, e.g. from the chunk store)."""
        if not isinstance(chunk, VerifiedChunk):
            raise LocalProtocolError("send_chunk takes a VerifiedChunk", code="bad_chunk")
        return self.send(chunk)

    def send_missing(self, digests: Iterable[bytes]) -> bytes:
        return self.send(Missing(digests=tuple(digests)))
