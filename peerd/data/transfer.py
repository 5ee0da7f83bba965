"""Chunks over ``/peerd/blob/1.0.0``: pumps stream bytes into the ``protocol.blobxfer`` machines.

Serving (``BlobService``, one per node; ``register_blob_protocol`` installs it
on the p2p service): the first ``blob_want`` names a task; the stream's peer
must be a party of that task's lease (``Access``, which the node answers from
its store: ``lease_access``), else the answer is ``blob_error not_authorized``.
Only digests the task pins in the chunk store are served (any other is
answered ``missing``, so a party of one task learns nothing about another's
chunks); every chunk is re-hashed as it is read (``ChunkStore.get_verified``)
and sent as that ``VerifiedChunk``, not hashed again. Wants are read, chunks
read from the store and chunks sent by three tasks side by side (at most
``READ_AHEAD`` chunks read ahead of the one being sent). A peer
holds at most ``max_streams_per_peer`` blob streams at once (``busy`` beyond).

Fetching (``fetch``): the digests the store lacks are pinned for the task
first, then split over ``streams`` streams opened at once, spread over the
peers that hold them. Every chunk is hashed once, by the machine as it
arrives (its data must hash to its digest); the ``VerifiedChunk`` it hands
out is stored as is (``ChunkStore.put_verified``), by a task beside the
stream's reader (at most ``STORE_QUEUE`` chunks wait), so reading goes on while
the store writes. A
stream that breaks or times out is opened again (after a short back-off)
asking only for what is still missing; a peer that fails ``retries`` times in
a row without delivering a chunk is dropped as unreachable. A peer that sends
a chunk that does not match its digest, or otherwise breaks the protocol, is
dropped from the transfer at once and recorded in ``FetchReport.bad_peers``;
its chunks come from the other peers. What no peer could deliver ends the
fetch with ``TransferIncomplete``, whose report says why for each peer.

Everything runs in the caller's nurseries; every read and write has a
deadline on trio's clock; stream errors are mapped once, in ``taskwire``.
This module imports no libp2p: the p2p layer hands it streams.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from peerd.data.blobstore import ChunkStore
from peerd.errors import PeerdError
from peerd.jobs.taskwire import ByteStream, PeerGone, PeerTimeout, receive_bytes, send_bytes, single_error
from peerd.p2p.errors import P2PError
from protocol.blobxfer import (
    BLOB_PROTOCOL,
    DEFAULT_WINDOW,
    MAX_IN_FLIGHT,
    BlobError,
    BlobErrorCode,
    BlobFetcher,
    BlobServer,
    BlobTransfer,
    Done,
    Missing,
    VerifiedChunk,
    Want,
)
from protocol.codec import NEED_DATA, decode_as
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.manifest import MAX_CHUNK_SIZE
from protocol.messages import LeaseTerms
from protocol.schema import Message

if TYPE_CHECKING:
    from peerd.p2p.service import P2PService
    from peerd.state.store import Store

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20  # per read from a blob stream: chunks are large
DEFAULT_STREAMS = 1  # py-libp2p's yamux: with the store pipelined, 2 streams on one connection moved no more
# than 1 (scripts/bench/transfer.py --full) and cost ~20 % more event-loop CPU and ~2x the fetcher's RSS growth
DEFAULT_RETRIES = 3  # failures in a row, without a chunk delivered, before a peer is dropped
DEFAULT_TIMEOUT = 30.0  # seconds for any one read or write (the node passes network.io_timeout)
BACKOFF = (0.05, 0.2, 0.5, 1.0)  # seconds before re-opening a stream, by failures in a row
MAX_STREAMS_PER_PEER = 8
READ_AHEAD = 1  # chunks a serving stream reads from the store ahead of the one it sends
STORE_QUEUE = 2  # received chunks a fetch stream holds for the store while it goes on reading
OFF_LOOP_FRAME = 64 << 10  # a received frame this large is decoded and hashed in a worker thread

Access = Callable[[str, str], Awaitable[bool]]
"""``access(remote_peer, task_id)``: may this peer have this task's chunks?"""

OpenStream = Callable[[str], Awaitable[ByteStream]]
"""``open_stream(peer_id)``: a new ``/peerd/blob/1.0.0`` stream to that peer (raises P2PError)."""


class ServedStream(ByteStream, Protocol):
    """An inbound stream: bytes plus the authenticated peer that opened it."""

    remote_peer: str


class TransferError(PeerdError):
    """A chunk transfer failed."""


class TransferIncomplete(TransferError):
    """Some chunks could be had from no peer; ``report`` says what happened with each."""

    def __init__(self, report: FetchReport) -> None:
        reasons = "; ".join(f"…{p[-8:]}: {why}" for p, why in {**report.dropped, **report.bad_peers}.items())
        super().__init__(
            f"task {report.task_id}: {len(report.missing)} of {report.wanted} chunks could not be fetched"
            + (f" ({reasons})" if reasons else " (no peer holds them)")
        )
        self.report = report


class RelayedTransfer(TransferError):
    """The peer is reachable only through a relay, hole punching failed, and ``[relay] allow_data`` is off."""

    def __init__(self, peer: str) -> None:
        super().__init__(
            f"peer …{peer[-8:]} is reachable only through a relay and hole punching found no direct path; "
            "job data does not go through relays unless [relay] allow_data = true"
        )
        self.peer = peer


class _Misbehaved(Exception):
    """The peer broke the protocol (a bad chunk above all): drop it."""


class _Refused(Exception):
    """The peer ended the transfer with a blob_error."""

    def __init__(self, error: BlobError) -> None:
        super().__init__(f"refused: {error.code} {error.detail}".rstrip())
        self.code = error.code


@dataclass
class FetchReport:
    """What one ``fetch`` did."""

    task_id: str
    wanted: int = 0  # distinct digests asked of fetch
    present: int = 0  # already in the store
    fetched: int = 0  # received, verified and stored
    chunk_bytes: int = 0  # bytes of the chunks stored
    wire_bytes: int = 0  # every byte read from blob streams, all attempts (frames, lost partial chunks)
    streams: int = 0  # streams opened
    retries: int = 0  # streams that broke and were opened again
    bad_peers: dict[str, str] = field(default_factory=dict)  # sent bad data: dropped, and why
    dropped: dict[str, str] = field(default_factory=dict)  # refused or unreachable: dropped, and why
    missing: tuple[bytes, ...] = ()  # still missing at the end

    @property
    def complete(self) -> bool:
        return not self.missing


async def _next_event(stream: ByteStream, machine: BlobTransfer, timeout: float) -> Message:
    """The machine's next message, reading as needed; PeerGone when the stream ended first.

    An end of stream is never fed to the machine: every complete frame was
    taken before reading, so it cut the transfer (a reset reads as an end of
    stream on libp2p), which is the network's doing, not a protocol violation.
    A frame of ``OFF_LOOP_FRAME`` bytes or more (a chunk, which the machine
    decodes and hashes) is taken in a worker thread: hashlib releases the GIL,
    so the event loop goes on moving the other streams' bytes meanwhile.
    """
    while True:
        if machine.ready_bytes >= OFF_LOOP_FRAME:
            event = await trio.to_thread.run_sync(machine.next_event)
        else:
            event = machine.next_event()
        if event is NEED_DATA:
            data = await receive_bytes(stream, timeout, READ_SIZE)
            if not data:
                raise PeerGone("the blob stream ended before the transfer did")
            machine.receive_data(data)
            continue
        assert isinstance(event, Message), event  # CLOSED needs an end of stream fed
        return event


async def _close(stream: ByteStream, *, clean: bool) -> None:
    """Close (or reset) a stream; bounded and shielded, never raises."""
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        try:
            await (stream.close() if clean else stream.reset())
        except (P2PError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("closing a blob stream failed: %r", exc)


# ---------------------------------------------------------------- fetching
class _Fetch:
    """One fetch: the shared state of its stream workers."""

    def __init__(
        self, open_stream: OpenStream, peers: Sequence[str], task_id: str, store: ChunkStore, *,
        window: int, max_chunk: int, retries: int, timeout: float, report: FetchReport,
    ) -> None:
        self.open_stream = open_stream
        self.peers = list(dict.fromkeys(peers))
        self.task_id = task_id
        self.store = store
        self.window, self.max_chunk, self.retries, self.timeout = window, max_chunk, retries, timeout
        self.report = report
        self.remaining: dict[bytes, None] = {}
        self.unavailable: dict[str, set[bytes]] = defaultdict(set)  # peer -> digests it answered missing
        self.landed: Callable[[VerifiedChunk], None] | None = None

    def usable(self, peer: str) -> bool:
        return peer not in self.report.bad_peers and peer not in self.report.dropped

    def choose(self, todo: list[bytes], start: int) -> tuple[str, list[bytes]] | None:
        """The first usable peer from ``start`` on that may hold some of ``todo``, and what to ask it."""
        for k in range(len(self.peers)):
            peer = self.peers[(start + k) % len(self.peers)]
            if self.usable(peer):
                ask = [d for d in todo if d not in self.unavailable[peer]]
                if ask:
                    return peer, ask
        return None

    async def worker(self, index: int, part: list[bytes]) -> None:
        """Fetch ``part`` (its digests are this worker's alone) until done or no peer can help."""
        failures: dict[str, int] = defaultdict(int)  # peer -> this worker's failures in a row without a chunk
        while True:
            todo = [d for d in part if d in self.remaining]
            choice = self.choose(todo, index) if todo else None
            if choice is None:
                return
            peer, ask = choice
            if failures[peer]:
                await trio.sleep(BACKOFF[min(failures[peer], len(BACKOFF)) - 1])
            progress = [0]
            why = await self.attempt(peer, ask, progress)
            failures[peer] = 0 if progress[0] else failures[peer]
            if why is not None:
                failures[peer] += 1
                self.report.retries += 1
                if failures[peer] > self.retries:
                    self.report.dropped.setdefault(peer, why)
                    log.info("gave up on blob peer …%s for task %s: %s", peer[-8:], self.task_id, why)

    async def attempt(self, peer: str, ask: list[bytes], progress: list[int]) -> str | None:
        """One stream to ``peer`` for ``ask``; why it failed if it may be tried again. Drops a peer that earned it."""
        try:
            await self.session(peer, ask, progress)
        except RelayedTransfer as exc:  # trying again would find the same path
            self.report.dropped.setdefault(peer, str(exc))
            log.info("blob peer …%s for task %s: %s", peer[-8:], self.task_id, exc)
        except (PeerGone, PeerTimeout, P2PError) as exc:
            return f"unreachable: {exc}"
        except _Refused as exc:
            if exc.code == BlobErrorCode.BUSY:
                return str(exc)
            self.report.dropped.setdefault(peer, str(exc))
            log.info("blob peer …%s refused task %s: %s", peer[-8:], self.task_id, exc)
        except _Misbehaved as exc:
            self.report.bad_peers.setdefault(peer, str(exc))
            log.warning("dropped blob peer …%s from task %s: %s", peer[-8:], self.task_id, exc)
        return None

    async def session(self, peer: str, ask: list[bytes], progress: list[int]) -> None:
        machine = BlobFetcher(self.task_id, ask, window=self.window, max_chunk=self.max_chunk)
        stream = await self.open_stream(peer)
        self.report.streams += 1
        clean = False
        try:
            await self.pump(stream, peer, machine, progress)
            clean = True
        finally:
            await _close(stream, clean=clean)

    async def pump(self, stream: ByteStream, peer: str, machine: BlobFetcher, progress: list[int]) -> None:
        """Run the exchange; the chunks it receives are stored by a task beside it, so reading goes on meanwhile.

        At most ``STORE_QUEUE`` received chunks wait for the store (memory is
        bounded; the exchange waits when they are there). When the exchange
        fails, the chunks already received are stored before its error is raised.
        """
        send, receive = trio.open_memory_channel[VerifiedChunk](STORE_QUEUE)
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.store_chunks, receive, progress)
                async with send:
                    try:
                        await self.exchange(stream, peer, machine, send)
                    except (PeerGone, PeerTimeout, P2PError, _Misbehaved, _Refused) as exc:  # raised once
                        failure = exc  # what was received is stored
        except BaseExceptionGroup as group:  # the store failed (quota): that ends the fetch
            raise single_error(group, (Exception,)) from None
        if failure is not None:
            raise failure

    async def store_chunks(self, chunks: trio.MemoryReceiveChannel[VerifiedChunk], progress: list[int]) -> None:
        async with chunks:
            async for chunk in chunks:  # the machine hashed it on arrival: stored without a second hash
                await self.store.put_verified(chunk)
                self.remaining.pop(chunk.digest, None)
                self.report.fetched += 1
                self.report.chunk_bytes += len(chunk.data)
                progress[0] += 1
                if self.landed is not None:
                    self.landed(chunk)

    async def exchange(
        self, stream: ByteStream, peer: str, machine: BlobFetcher, chunks: trio.MemorySendChannel[VerifiedChunk],
    ) -> None:
        counted = _CountingStream(stream, self.report)
        while True:
            while (want := machine.next_want()) is not None:
                await send_bytes(stream, want, self.timeout)
            if machine.complete or machine.exhausted:
                await send_bytes(stream, machine.finish(), self.timeout)
                return
            try:
                event = await _next_event(counted, machine, self.timeout)
            except RemoteProtocolError as exc:
                bad = exc.code == "bad_chunk"
                what = "sent a chunk that does not match its digest" if bad else "broke the protocol"
                raise _Misbehaved(f"{what}: {exc}") from exc
            if isinstance(event, VerifiedChunk):
                await chunks.send(event)
            elif isinstance(event, Missing):
                self.unavailable[peer].update(event.digests)
            elif isinstance(event, BlobError):
                raise _Refused(event)


class _CountingStream:
    """Counts the bytes read from a fetcher's stream into the report."""

    def __init__(self, stream: ByteStream, report: FetchReport) -> None:
        self._stream, self._report = stream, report

    async def read(self, max_bytes: int, *, timeout: float | None = None) -> bytes:
        data = await self._stream.read(max_bytes, timeout=timeout)
        self._report.wire_bytes += len(data)
        return data

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()


async def fetch(
    open_stream: OpenStream, peers: Sequence[str], task_id: str, digests: Sequence[bytes], store: ChunkStore, *,
    streams: int = DEFAULT_STREAMS, window: int = DEFAULT_WINDOW, max_chunk: int = MAX_CHUNK_SIZE,
    retries: int = DEFAULT_RETRIES, timeout: float = DEFAULT_TIMEOUT,
    landed: Callable[[VerifiedChunk], None] | None = None,
) -> FetchReport:
    """Make ``store`` hold every one of ``digests`` for ``task_id``, fetching what it lacks from ``peers``.

    Pins all of ``digests`` for the task first (the caller releases them when
    the task is done). ``landed`` is given each fetched chunk (verified) as soon
    as the store holds it (a consumer may use chunks while the rest still move).
    Returns the report; raises TransferIncomplete (with the report) when some
    chunk could be had from no peer, BlobStoreError when the store refuses one
    (quota), LocalProtocolError for a bad argument.
    """
    if streams < 1:
        raise LocalProtocolError(f"streams must be at least 1, got {streams}")
    BlobFetcher(task_id, (), window=window, max_chunk=max_chunk)  # checks task id, window, max_chunk now
    wanted = list(dict.fromkeys(digests))
    report = FetchReport(task_id, wanted=len(wanted))
    await store.pin(task_id, wanted)
    missing = await store.missing(wanted)
    report.present = len(wanted) - len(missing)
    state = _Fetch(open_stream, peers, task_id, store, window=window, max_chunk=max_chunk, retries=retries,
                   timeout=timeout, report=report)
    state.landed = landed
    state.remaining = dict.fromkeys(missing)
    if missing and state.peers:
        parts = [missing[i::streams] for i in range(min(streams, len(missing)))]
        try:
            async with trio.open_nursery() as nursery:
                for index, part in enumerate(parts):
                    nursery.start_soon(state.worker, index, part)
        except BaseExceptionGroup as group:  # a store error (quota) ends every worker
            raise single_error(group, (PeerdError,)) from None
    report.missing = tuple(state.remaining)
    if report.missing:
        raise TransferIncomplete(report)
    return report


# ---------------------------------------------------------------- serving
@dataclass
class ServeCounters:
    streams: int = 0
    refused: int = 0  # not a party of the task's lease
    busy: int = 0
    chunks: int = 0
    bytes: int = 0
    missing: int = 0
    broken: int = 0  # streams that ended in a protocol violation, a timeout or a reset


class BlobService:
    """Serves the chunk store on ``/peerd/blob/1.0.0`` to the parties of each task's lease."""

    def __init__(
        self, store: ChunkStore, access: Access, *, timeout: float = DEFAULT_TIMEOUT,
        max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
    ) -> None:
        self.store = store
        self.access = access
        self.timeout = timeout
        self.max_streams_per_peer = max_streams_per_peer
        self.counters = ServeCounters()
        self._open: dict[str, int] = defaultdict(int)

    async def serve(self, stream: ServedStream) -> None:
        """The stream handler: one fetcher, until it says done (or breaks)."""
        peer = stream.remote_peer
        self.counters.streams += 1
        self._open[peer] += 1
        try:
            await serve_blobs(stream, peer, self.store, self.access, timeout=self.timeout,
                              counters=self.counters, busy=self._open[peer] > self.max_streams_per_peer)
        finally:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]


async def serve_blobs(
    stream: ByteStream, remote_peer: str, store: ChunkStore, access: Access, *, timeout: float = DEFAULT_TIMEOUT,
    counters: ServeCounters | None = None, busy: bool = False,
) -> None:
    """Answer one fetcher's wants from ``store``; returns when the transfer ends, never raises for the peer."""
    counters = counters if counters is not None else ServeCounters()
    machine = BlobServer()
    try:
        try:
            await _serve(stream, remote_peer, store, access, machine, timeout, counters, busy)
        except BaseExceptionGroup as group:  # from the read-ahead nursery of _answer
            raise single_error(group, (Exception,)) from None
    except (PeerGone, PeerTimeout, RemoteProtocolError) as exc:
        counters.broken += 1
        log.info("blob stream from …%s ended: %s", remote_peer[-8:], exc)


async def _serve(
    stream: ByteStream, peer: str, store: ChunkStore, access: Access, machine: BlobServer, timeout: float,
    counters: ServeCounters, busy: bool,
) -> None:
    event = await _next_event(stream, machine, timeout)
    if not isinstance(event, Want):  # the table allows only a want or an error first
        return
    refusal = await _refusal(peer, event.task_id, access, busy)
    if refusal is not None:
        code, detail = refusal
        if code is BlobErrorCode.BUSY:
            counters.busy += 1
        else:
            counters.refused += 1
        await send_bytes(stream, machine.abort(code, detail), timeout)
        return
    await _answer(stream, store, machine, await store.pinned(event.task_id), event.digests, timeout, counters)


async def _refusal(peer: str, task_id: str, access: Access, busy: bool) -> tuple[BlobErrorCode, str] | None:
    if not await access(peer, task_id):
        return BlobErrorCode.NOT_AUTHORIZED, f"not a party of the lease of task {task_id}"
    if busy:
        return BlobErrorCode.BUSY, "too many blob streams from this peer"
    return None


async def _answer(
    stream: ByteStream, store: ChunkStore, machine: BlobServer, allowed: set[bytes], first: Sequence[bytes],
    timeout: float, counters: ServeCounters,
) -> None:
    """Answer every digest asked, in order: its chunk, or missing (absent, corrupt, or not this task's).

    Three tasks run side by side, so the stream is never idle while the store
    reads or the next want is parsed: this one reads the fetcher's wants and
    queues their digests (the machine holds at most ``MAX_IN_FLIGHT`` unanswered,
    so the queue never blocks it), ``_read_chunks`` reads and re-hashes each
    chunk from the store (at most ``READ_AHEAD`` wait to be sent), and
    ``_send_answers`` sends them. A fetcher asks for one more chunk as each one
    lands, so answering want by want would read and send one chunk at a time.
    """
    digests_in, digests_out = trio.open_memory_channel[bytes](MAX_IN_FLIGHT)
    answers_in, answers_out = trio.open_memory_channel[tuple[bytes, VerifiedChunk | None]](READ_AHEAD)
    # The wants stop while the last chunks go out (all is asked), and a slow fetcher takes a while to
    # take a window: the reader times out only after `timeout` without a want *and* without a chunk sent.
    quiet = trio.CancelScope(deadline=trio.current_time() + timeout)

    def progressed() -> None:
        quiet.deadline = trio.current_time() + timeout

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_chunks, store, allowed, digests_out, answers_in)
        nursery.start_soon(_send_answers, stream, machine, answers_out, timeout, counters, progressed)
        async with digests_in:
            for digest in first:
                digests_in.send_nowait(digest)
            with quiet:
                while True:
                    event = await _next_event(stream, machine, math.inf)
                    progressed()
                    if isinstance(event, Want):
                        for digest in event.digests:
                            digests_in.send_nowait(digest)
                    elif isinstance(event, BlobError):  # the fetcher gave up: nothing more is sent
                        nursery.cancel_scope.cancel()
                        return
                    elif isinstance(event, Done):  # only when every digest was answered
                        return
            raise PeerTimeout(f"the fetcher asked for nothing and took nothing for {timeout:g}s")


async def _read_chunks(
    store: ChunkStore, allowed: set[bytes], digests: trio.MemoryReceiveChannel[bytes],
    answers: trio.MemorySendChannel[tuple[bytes, VerifiedChunk | None]],
) -> None:
    async with digests, answers:
        async for digest in digests:
            await answers.send((digest, await store.get_verified(digest) if digest in allowed else None))  # re-hashed


async def _send_answers(
    stream: ByteStream, machine: BlobServer, answers: trio.MemoryReceiveChannel[tuple[bytes, VerifiedChunk | None]],
    timeout: float, counters: ServeCounters, progressed: Callable[[], None],
) -> None:
    async with answers:
        async for digest, chunk in answers:
            out = None
            if chunk is not None:
                try:
                    out = machine.send_chunk(chunk)  # not hashed again: a VerifiedChunk
                except LocalProtocolError:  # larger than this machine sends: serve it as missing
                    chunk = None
            if out is None:
                out = machine.send_missing([digest])
            await send_bytes(stream, out, timeout)
            progressed()
            if chunk is None:
                counters.missing += 1
            else:  # counted once sent
                counters.chunks += 1
                counters.bytes += len(chunk.data)


# ---------------------------------------------------------------- wiring
def lease_access(store: Store) -> Access:
    """Access from the node's store: the peer is the requester or the provider of the task's lease."""

    async def access(remote_peer: str, task_id: str) -> bool:
        lease = await store.get_lease(task_id)
        if lease is None:
            return False
        terms = decode_as(lease.terms, LeaseTerms)
        assert isinstance(terms, LeaseTerms)
        return remote_peer in (terms.requester, terms.provider)

    return access


def register_blob_protocol(
    p2p: P2PService, store: ChunkStore, access: Access, *, timeout: float = DEFAULT_TIMEOUT,
) -> BlobService:
    """Serve ``store`` on ``/peerd/blob/1.0.0`` (before or after the service starts)."""
    service = BlobService(store, access, timeout=timeout)
    p2p.set_stream_handler(BLOB_PROTOCOL, service.serve)
    return service


def blob_opener(p2p: P2PService, addrs: dict[str, list[str]] | None = None) -> OpenStream:
    """``open_stream`` for ``fetch`` over ``p2p`` (dialling with ``addrs[peer]`` when given).

    Job data never goes through a relay unless ``[relay] allow_data``: a
    stream that opened on a relayed connection is reset, ``p2p.try_direct``
    tries hole punching (bounded), and the stream is opened again on the
    direct connection; when there is none, ``RelayedTransfer`` (the fetch
    drops the peer at once with that reason).
    """

    async def open_stream(peer: str) -> ByteStream:
        if not p2p.relay.allow_data and p2p.is_relayed(peer):
            await p2p.try_direct(peer)  # one try per peer at a time: the other streams wait for it
        for last_try in (False, True):
            stream = await p2p.open_stream(peer, BLOB_PROTOCOL, (addrs or {}).get(peer))
            if p2p.relay.allow_data or not stream.relayed:
                p2p.note_data_stream(stream.relayed)
                return stream
            await _close(stream, clean=False)
            if last_try or not await p2p.try_direct(peer):
                break
        raise RelayedTransfer(peer)

    return open_stream


__all__ = [
    "BLOB_PROTOCOL", "Access", "BlobService", "FetchReport", "OpenStream", "RelayedTransfer", "ServeCounters",
    "TransferError",
    "TransferIncomplete", "blob_opener", "fetch", "lease_access", "register_blob_protocol", "serve_blobs",
]
