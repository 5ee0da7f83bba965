"""protocol.blobxfer: the chunk transfer machines, back to back."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec
from protocol.blobxfer import (
    BLOB_MESSAGES,
    MAX_IN_FLIGHT,
    MAX_WANT,
    TRANSITIONS,
    BlobError,
    BlobErrorCode,
    BlobFetcher,
    BlobServer,
    Chunk,
    Done,
    Missing,
    Role,
    State,
    VerifiedChunk,
    Want,
)
from protocol.codec import CLOSED, NEED_DATA
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.schema import MAX_STR


def blob(i: int, size: int = 100) -> tuple[bytes, bytes]:
    data = i.to_bytes(4, "big") * (size // 4)
    return hashlib.sha256(data).digest(), data


CHUNKS = dict(blob(i) for i in range(50))


def events(machine: BlobFetcher | BlobServer) -> list[object]:
    out = []
    while (event := machine.next_event()) not in (NEED_DATA, CLOSED):
        out.append(event)
    return out


def serve(server: BlobServer, store: dict[bytes, bytes]) -> bytes:
    """Answer everything pending from ``store`` (missing in one message)."""
    out = b""
    absent = [d for d in server.pending if d not in store]
    for digest in server.pending:
        if digest in store:
            out += server.send_chunk(VerifiedChunk(digest=digest, data=store[digest]))
    if absent:
        out += server.send_missing(absent)
    return out


def run(fetcher: BlobFetcher, server: BlobServer, store: dict[bytes, bytes], rounds: int = 100) -> int:
    """Drive both until nothing more moves; returns the largest number in flight seen."""
    peak = 0
    for _ in range(rounds):
        while want := fetcher.next_want():
            server.receive_data(want)
        peak = max(peak, len(fetcher.pending))
        events(server)
        answer = serve(server, store)
        if not answer:
            break
        fetcher.receive_data(answer)
        events(fetcher)
    return peak


# ---------------------------------------------------------------- messages
@pytest.mark.parametrize(
    "msg",
    [Want(task_id="t", digests=(bytes(32), b"\1" * 32)), Chunk(digest=bytes(32), data=b"x"),
     Missing(digests=(bytes(32),)), Done(), BlobError(code=BlobErrorCode.BUSY, detail="later")],
)
def test_messages_roundtrip(msg: object) -> None:
    data = codec.encode(msg)  # type: ignore[arg-type]
    assert codec.decode(data, BLOB_MESSAGES) == msg


def test_message_bounds() -> None:
    for bad in (
        lambda: Want(task_id="t", digests=()),
        lambda: Want(task_id="t", digests=(bytes(31),)),
        lambda: Want(task_id="t", digests=(bytes(32), bytes(32))),
        lambda: Want(task_id="t", digests=tuple(i.to_bytes(32, "big") for i in range(MAX_WANT + 1))),
        lambda: Want(task_id="", digests=(bytes(32),)),
        lambda: Want(task_id="x" * 65, digests=(bytes(32),)),
        lambda: Chunk(digest=bytes(33), data=b""),
        lambda: Chunk(digest=bytes(32), data=bytes((4 << 20) + 1)),
        lambda: Missing(digests=()),
        lambda: BlobError(code="nope", detail=""),  # type: ignore[arg-type]
        lambda: BlobError(code=BlobErrorCode.BUSY, detail="x" * (MAX_STR + 1)),
    ):
        with pytest.raises(LocalProtocolError):
            bad()


def test_blob_messages_are_not_task_stream_messages() -> None:
    with pytest.raises(RemoteProtocolError):
        codec.decode(codec.encode(Done()))  # not in MESSAGE_TYPES: another stream protocol


# ---------------------------------------------------------------- the happy path
def test_a_fetch_completes_within_the_window_and_ends_cleanly() -> None:
    fetcher = BlobFetcher("t", CHUNKS, window=8)
    server = BlobServer()
    peak = run(fetcher, server, CHUNKS)
    assert fetcher.complete and peak == 8
    assert fetcher.received_bytes == sum(len(d) for d in CHUNKS.values())
    server.receive_data(fetcher.finish())
    assert events(server) == [Done()]
    assert server.state is fetcher.state is State.DONE
    server.receive_data(b"")
    assert server.next_event() is CLOSED


def test_the_server_sees_the_task_and_what_is_pending() -> None:
    fetcher = BlobFetcher("task-1", list(CHUNKS)[:3])
    server = BlobServer()
    server.receive_data(fetcher.next_want() or b"")
    [want] = events(server)
    assert isinstance(want, Want) and want.task_id == "task-1" == server.task_id
    assert server.pending == tuple(list(CHUNKS)[:3])


def test_missing_chunks_leave_the_fetcher_exhausted_not_complete() -> None:
    have = dict(list(CHUNKS.items())[:10])
    fetcher = BlobFetcher("t", CHUNKS, window=16)
    run(fetcher, BlobServer(), have)
    assert not fetcher.complete and fetcher.exhausted
    assert set(fetcher.missing) == set(CHUNKS) - set(have) == fetcher.unavailable
    assert fetcher.next_want() is None  # never asks this server again
    fetcher.finish()


def test_a_resumed_transfer_asks_only_for_what_is_missing() -> None:
    first = BlobFetcher("t", CHUNKS, window=8)
    server = BlobServer()
    server.receive_data(first.next_want() or b"")
    events(server)
    # Half the window arrives, then the stream is reset.
    answer = b"".join(server.send_chunk(VerifiedChunk(digest=d, data=CHUNKS[d])) for d in server.pending[:4])
    first.receive_data(answer)
    assert len(events(first)) == 4
    got = set(CHUNKS) - set(first.missing)
    second = BlobFetcher("t", first.missing, window=MAX_IN_FLIGHT)
    server2 = BlobServer()
    asked: list[bytes] = []
    while want := second.next_want():
        server2.receive_data(want)
        asked += [d for w in events(server2) for d in w.digests]  # type: ignore[attr-defined]
    assert set(asked) == set(CHUNKS) - got and len(asked) == len(set(asked)) == 46
    run(second, server2, CHUNKS)
    assert second.complete


# ---------------------------------------------------------------- a lying or broken server
def chunk_frame(digest: bytes, data: bytes) -> bytes:
    return codec.frame(codec.encode(Chunk(digest=digest, data=data)), 1 << 23)


def started() -> tuple[BlobFetcher, list[bytes]]:
    fetcher = BlobFetcher("t", CHUNKS, window=4)
    want = codec.decode(next(codec.iter_frames(fetcher.next_want() or b"")), BLOB_MESSAGES)
    assert isinstance(want, Want)
    return fetcher, list(want.digests)


def test_a_chunk_that_does_not_match_its_digest_is_bad_chunk() -> None:
    fetcher, asked = started()
    fetcher.receive_data(chunk_frame(asked[0], CHUNKS[asked[0]] + b"!"))
    with pytest.raises(RemoteProtocolError) as info:
        fetcher.next_event()
    assert info.value.code == "bad_chunk"
    assert fetcher.state is State.ERROR and asked[0] in fetcher.missing
    with pytest.raises(RemoteProtocolError):
        fetcher.next_event()  # stays failed
    assert fetcher.next_want() is None
    with pytest.raises(LocalProtocolError):
        fetcher.abort(BlobErrorCode.BAD_CHUNK)


@pytest.mark.parametrize("which", ["unasked", "twice"])
def test_unasked_or_repeated_chunks_are_refused(which: str) -> None:
    fetcher, asked = started()
    digest = asked[0]
    if which == "unasked":
        digest = next(d for d in CHUNKS if d not in asked)
    else:
        fetcher.receive_data(chunk_frame(digest, CHUNKS[digest]))
        assert len(events(fetcher)) == 1
    fetcher.receive_data(chunk_frame(digest, CHUNKS[digest]))
    with pytest.raises(RemoteProtocolError) as info:
        fetcher.next_event()
    assert info.value.code == "invalid_message"


def test_a_chunk_over_max_chunk_is_refused_at_the_frame_header() -> None:
    fetcher = BlobFetcher("t", CHUNKS, max_chunk=1 << 16)
    fetcher.next_want()
    fetcher.receive_data(struct.pack(">I", (1 << 16) + 129))
    with pytest.raises(RemoteProtocolError) as info:
        fetcher.next_event()
    assert info.value.code == "frame_too_large"


def test_a_server_error_ends_the_transfer_and_later_bytes_are_dropped() -> None:
    fetcher, asked = started()
    fetcher.receive_data(codec.frame(codec.encode(BlobError(code=BlobErrorCode.NOT_AUTHORIZED, detail="no"))))
    [error] = events(fetcher)
    assert isinstance(error, BlobError) and fetcher.error == error and fetcher.state is State.FAILED
    fetcher.receive_data(chunk_frame(asked[0], CHUNKS[asked[0]]))
    assert fetcher.next_event() is NEED_DATA
    fetcher.receive_data(b"")
    assert fetcher.next_event() is CLOSED


# ---------------------------------------------------------------- a greedy or broken fetcher
def want_frame(digests: list[bytes], task_id: str = "t") -> bytes:
    return codec.frame(codec.encode(Want(task_id=task_id, digests=tuple(digests))))


def test_the_server_refuses_more_than_max_in_flight() -> None:
    digests = [i.to_bytes(32, "big") for i in range(MAX_IN_FLIGHT + 1)]
    server = BlobServer()
    server.receive_data(want_frame(digests[:MAX_IN_FLIGHT]))
    assert len(events(server)) == 1
    server.receive_data(want_frame(digests[MAX_IN_FLIGHT:]))
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code == "too_many_in_flight"


@pytest.mark.parametrize("second", [([b"\1" * 32], "t"), ([b"\2" * 32], "other-task")])
def test_the_server_refuses_a_repeated_digest_or_another_task(second: tuple[list[bytes], str]) -> None:
    server = BlobServer()
    server.receive_data(want_frame([b"\1" * 32]))
    events(server)
    server.receive_data(want_frame(*second))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_done_with_chunks_in_flight_is_refused_both_ways() -> None:
    fetcher, _ = started()
    with pytest.raises(LocalProtocolError):
        fetcher.finish()
    server = BlobServer()
    server.receive_data(want_frame([b"\1" * 32]) + codec.frame(codec.encode(Done())))
    with pytest.raises(RemoteProtocolError) as info:
        events(server)
    assert info.value.code == "invalid_message"


def test_the_server_never_sends_data_that_does_not_match() -> None:
    server = BlobServer()
    digest, data = blob(1)
    server.receive_data(want_frame([digest]))
    events(server)
    with pytest.raises(LocalProtocolError) as info:
        server.send_chunk(VerifiedChunk(digest=digest, data=data + b"x"))  # no such thing can be made
    assert info.value.code == "bad_chunk"
    with pytest.raises(LocalProtocolError) as info:
        server.send_chunk(Chunk(digest=digest, data=data + b"x"))  # type: ignore[arg-type]
    assert info.value.code == "bad_chunk"
    with pytest.raises(LocalProtocolError) as info:
        server.send(Chunk(digest=digest, data=data + b"x"))  # a plain Chunk is always hashed
    assert info.value.code == "bad_chunk"
    assert server.pending == (digest,)  # unchanged: the real data can still go
    assert server.send_chunk(VerifiedChunk(digest=digest, data=data))
    with pytest.raises(LocalProtocolError):
        server.send_chunk(VerifiedChunk(digest=digest, data=data))  # answered once only


def test_the_fetcher_hands_out_each_received_chunk_as_verified_hashing_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest, data = blob(2)
    fetcher = BlobFetcher("t", [digest])
    server = BlobServer()
    server.receive_data(fetcher.next_want() or b"")
    events(server)
    wire = server.send_chunk(VerifiedChunk(digest=digest, data=data))
    calls: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes) -> hashlib._Hash:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    fetcher.receive_data(wire)
    [event] = events(fetcher)
    assert type(event) is VerifiedChunk and (event.digest, event.data) == (digest, data)
    assert calls == [len(data)]


def test_messages_outside_the_table_are_unexpected() -> None:
    server = BlobServer()
    server.receive_data(codec.frame(codec.encode(Chunk(digest=bytes(32), data=b""))))
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.code == "unexpected_message"
    with pytest.raises(LocalProtocolError):
        BlobServer().send_missing([bytes(32)])  # nothing asked, not even open


def test_the_table_names_only_known_messages_and_roles() -> None:
    for (state, sender, tag), new in TRANSITIONS.items():
        assert tag in BLOB_MESSAGES and isinstance(sender, Role) and isinstance(new, State)
        assert state not in (State.DONE, State.FAILED, State.ERROR)


def test_bad_arguments_are_refused_early() -> None:
    for bad in (
        lambda: BlobFetcher("", []), lambda: BlobFetcher("t", [b"x"]), lambda: BlobFetcher("t", [], window=0),
        lambda: BlobFetcher("t", [], window=MAX_IN_FLIGHT + 1), lambda: BlobServer(max_chunk=0),
    ):
        with pytest.raises(LocalProtocolError):
            bad()


# ---------------------------------------------------------------- property
@settings(max_examples=150, deadline=None)
@given(
    have=st.lists(st.booleans(), min_size=50, max_size=50),
    window=st.integers(1, MAX_IN_FLIGHT),
    cuts=st.lists(st.integers(1, 200), max_size=6),
)
def test_any_split_of_the_bytes_gives_the_same_result(have: list[bool], window: int, cuts: list[int]) -> None:
    """Whatever the server holds and however the stream is cut, every held chunk arrives once."""
    store = {d: c for (d, c), keep in zip(CHUNKS.items(), have, strict=True) if keep}
    fetcher = BlobFetcher("t", CHUNKS, window=window)
    server = BlobServer()
    for _ in range(200):
        while want := fetcher.next_want():
            server.receive_data(want)
        events(server)
        answer = serve(server, store)
        if not answer:
            break
        for cut in cuts:  # deliver in pieces
            piece, answer = answer[:cut], answer[cut:]
            if piece:  # b"" would mean the stream closed
                fetcher.receive_data(piece)
                events(fetcher)
        if answer:
            fetcher.receive_data(answer)
            events(fetcher)
    assert set(CHUNKS) - set(fetcher.missing) == set(store)
    assert fetcher.exhausted and fetcher.unavailable == set(CHUNKS) - set(store)


def test_ready_bytes_tells_a_complete_chunk_frame_before_it_is_decoded() -> None:
    digest, data = blob(7, 4096)
    fetcher, server = BlobFetcher("t", [digest]), BlobServer()
    want = fetcher.next_want()
    assert want is not None
    server.receive_data(want)
    assert isinstance(server.next_event(), Want)
    out = server.send_chunk(VerifiedChunk(digest=digest, data=data))
    fetcher.receive_data(out[:-1])
    assert fetcher.ready_bytes == 0  # incomplete: next_event would need data
    assert fetcher.next_event() is NEED_DATA
    fetcher.receive_data(out[-1:])
    assert fetcher.ready_bytes == len(out) - codec.HEADER_SIZE > len(data)
    event = fetcher.next_event()
    assert isinstance(event, VerifiedChunk) and event.data == data
    assert fetcher.ready_bytes == 0
