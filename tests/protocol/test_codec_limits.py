"""Exact limits and refusals of protocol/codec.py, each with its wire error code.

The hostile-input properties (test_decode_robust.py) prove that nothing but a
ProtocolError escapes; these pin *which* refusal, where each limit lies, and
that valid input next to a limit still goes through (mutation-run survivors).
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from protocol import codec, messages as m
from protocol.errors import DecodeError, FrameTooLarge, LocalProtocolError

CANCEL = m.Cancel(task_id="t", reason="why")
CANCEL_BYTES = codec.encode(CANCEL)


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def refused(data: bytes, match: str) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        codec.decode(data)
    assert info.value.code == "malformed"
    return info.value


# ---------------------------------------------------------------- decode
def test_decode_takes_any_bytes_like() -> None:
    for data in (CANCEL_BYTES, bytearray(CANCEL_BYTES), memoryview(CANCEL_BYTES)):
        assert codec.decode(data) == CANCEL  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([1, 2], "must be a map, got list"),
        ({"t": "cancel", "task_id": "t", "reason": ""}, "no integer protocol version"),
        ({"v": "1", "t": "cancel", "task_id": "t", "reason": ""}, "no integer protocol version"),
        ({"v": 1.0, "t": "cancel", "task_id": "t", "reason": ""}, "no integer protocol version"),
        ({"v": 2, "t": "cancel", "task_id": "t", "reason": ""}, "unsupported protocol version 2"),
        ({"v": 0, "t": "cancel", "task_id": "t", "reason": ""}, "unsupported protocol version 0"),
        ({"v": 1, "task_id": "t", "reason": ""}, "unknown message type None"),
        ({"v": 1, "t": "nope", "task_id": "t", "reason": ""}, "unknown message type 'nope'"),
        ({"v": 1, "t": ["cancel"], "task_id": "t", "reason": ""}, r"unknown message type \['cancel'\]"),
        ({"v": 1, "t": b"cancel", "task_id": "t", "reason": ""}, "unknown message type b'cancel'"),
        ({"v": 1, "t": "cancel", "task_id": "t"}, "Cancel"),
        ({"v": 1, "t": "cancel", "task_id": "t", "reason": "", "extra": 1}, "Cancel"),
    ],
)
def test_decode_refusals(value: object, match: str) -> None:
    refused(pack(value), match)


def test_empty_and_garbage_bytes() -> None:
    refused(b"", "empty message")
    refused(b"\xc1", "not a valid msgpack document")
    refused(CANCEL_BYTES + b"\x00", "not a valid msgpack document")  # trailing data
    refused(CANCEL_BYTES[:-1], "not a valid msgpack document")  # truncated
    refused(b"\x81\xa1v\xa2\xff\xfe", "not a valid msgpack document")  # invalid UTF-8


def test_strings_come_back_as_str_and_arrays_as_tuples() -> None:
    offer = m.Offer(task_id="t", price=1.0, expires_at=2.0, cpus=1.0, memory=1, gpus=("a", "b"))
    decoded = codec.decode(codec.encode(offer))
    assert decoded == offer and type(decoded.task_id) is str  # type: ignore[attr-defined]


def test_binary_fields_stay_binary_and_str_keys_are_required() -> None:
    chunk = m.LogChunk(task_id="t", stream=m.LogStream.STDOUT, seq=0, data=b"\xff\x00")
    assert codec.decode(codec.encode(chunk)) == chunk
    refused(pack({"v": 1, "t": "cancel", 1: "t", "reason": ""}), "not a valid msgpack document")


def test_ext_and_duplicate_keys_are_malformed() -> None:
    refused(pack({"v": 1, "t": "cancel", "task_id": msgpack.ExtType(1, b""), "reason": ""}), "ext type 1")
    refused(b"\x84\xa1v\x01\xa1t\xa6cancel\xa6reason\xa0\xa6reason\xa0", "repeats a key")


def test_decode_as() -> None:
    assert codec.decode_as(CANCEL_BYTES, m.Cancel) == CANCEL
    with pytest.raises(DecodeError, match="expected 'accept', got 'cancel'") as info:
        codec.decode_as(CANCEL_BYTES, m.Accept)
    assert info.value.code == "malformed"


# ---------------------------------------------------------------- encode and frame
def test_encode_refuses_what_is_not_a_message() -> None:
    for bad in (object(), m.Message(), m.GpuOffer(uuid="u", model="", memory=0, compute_capability="")):
        with pytest.raises(LocalProtocolError, match="not a message"):
            codec.encode(bad)  # type: ignore[arg-type]


def test_frame_limit_is_inclusive() -> None:
    assert codec.frame(b"x" * 10, max_frame=10) == struct.pack(">I", 10) + b"x" * 10
    with pytest.raises(LocalProtocolError, match="frame of 11 bytes exceeds 10"):
        codec.frame(b"x" * 11, max_frame=10)
    assert codec.frame(b"") == b"\x00\x00\x00\x00"


def test_encode_frame_passes_its_limit_on() -> None:
    assert codec.encode_frame(CANCEL) == codec.frame(CANCEL_BYTES)
    assert codec.encode_frame(CANCEL, len(CANCEL_BYTES)) == codec.frame(CANCEL_BYTES)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        codec.encode_frame(CANCEL, len(CANCEL_BYTES) - 1)
    assert codec.DEFAULT_MAX_FRAME == 4 << 20 and codec.HEADER_SIZE == 4


# ---------------------------------------------------------------- FrameDecoder
def test_frame_decoder_limit_is_inclusive_and_coded() -> None:
    decoder = codec.FrameDecoder(max_frame=8)
    decoder.receive_data(struct.pack(">I", 8))
    decoder.receive_data(b"12345678")
    assert decoder.next_frame() == b"12345678"
    with pytest.raises(FrameTooLarge, match="frame of 9 bytes exceeds the maximum of 8") as info:
        decoder.receive_data(struct.pack(">I", 9))
    assert info.value.code == "frame_too_large"
    assert codec.FrameDecoder().max_frame == codec.DEFAULT_MAX_FRAME


def test_frame_decoder_waits_for_a_whole_header_and_body() -> None:
    decoder = codec.FrameDecoder()
    data = codec.frame(CANCEL_BYTES)
    for i, byte in enumerate(data[:-1]):
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is None and decoder.pending == i + 1
        assert not decoder.closed
    decoder.receive_data(data[-1:])
    assert decoder.next_frame() == CANCEL_BYTES and decoder.pending == 0
    assert decoder.next_frame() is None and not decoder.closed
    decoder.receive_data(b"")
    assert decoder.closed and decoder.next_frame() is None


def test_frame_decoder_takes_frames_one_at_a_time() -> None:
    decoder = codec.FrameDecoder()
    decoder.receive_data(codec.frame(b"a") + codec.frame(b"") + codec.frame(b"bc") + b"\x00")
    assert decoder.next_frame() == b"a"
    assert decoder.pending == 4 + 6 + 1
    assert decoder.next_frame() == b""
    assert decoder.next_frame() == b"bc"
    assert decoder.next_frame() is None and decoder.pending == 1
    decoder.receive_data(b"")
    assert not decoder.closed
    with pytest.raises(DecodeError, match=r"stream closed inside a frame \(1 bytes pending\)") as info:
        decoder.next_frame()
    assert info.value.code == "malformed"


def test_frame_decoder_eof_inside_a_body() -> None:
    decoder = codec.FrameDecoder()
    decoder.receive_data(codec.frame(b"abc")[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(b"")
    with pytest.raises(DecodeError, match="6 bytes pending"):
        decoder.next_frame()


def test_oversize_header_is_refused_by_next_frame_too() -> None:
    decoder = codec.FrameDecoder(max_frame=4)
    decoder.max_frame = 100
    decoder.receive_data(struct.pack(">I", 5))
    decoder.max_frame = 4
    with pytest.raises(FrameTooLarge, match="frame of 5 bytes exceeds the maximum of 4"):
        decoder.next_frame()


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of ``sizes`` (cycled), the last one what is left."""
    pieces, at, k = [], 0, 0
    while at < len(data):
        size = sizes[k % len(sizes)]
        pieces.append(data[at:at + size])
        at, k = at + size, k + 1
    return pieces


FRAMES = [b"a", b"", b"bc", bytes(range(256)) * 41, b"", b"z" * 3, bytes(70_000)]


@pytest.mark.parametrize("sizes", [[1], [2], [3], [5], [4], [7, 1, 2], [65_536], [10_501, 3], [1 << 20]])
def test_frame_decoder_gives_the_same_frames_whatever_the_pieces(sizes: list[int]) -> None:
    """1-byte pieces, headers split over pieces, several frames (and a frame's tail) in one piece."""
    data = b"".join(codec.frame(f) for f in FRAMES)
    decoder = codec.FrameDecoder()
    got: list[bytes] = []
    for piece in _split(data, sizes):
        decoder.receive_data(piece)
        while decoder.ready or decoder.pending >= codec.HEADER_SIZE:
            ready = decoder.ready
            payload = decoder.next_frame()
            if payload is None:
                assert ready == 0
                break
            assert ready == len(payload)
            assert type(payload) is bytes
            got.append(payload)
    assert got == FRAMES and decoder.pending == 0
    decoder.receive_data(b"")
    assert decoder.closed and decoder.next_frame() is None


def test_frame_decoder_takes_bytes_like_pieces_and_keeps_none_of_them_mutable() -> None:
    data = bytearray(codec.frame(b"hello") + codec.frame(b"world"))
    decoder = codec.FrameDecoder()
    decoder.receive_data(data[:7])  # type: ignore[arg-type]
    decoder.receive_data(memoryview(data)[7:])  # type: ignore[arg-type]
    data[:] = bytes(len(data))  # the caller reuses its buffer
    assert decoder.next_frame() == b"hello" and decoder.next_frame() == b"world"


def test_frame_decoder_oversize_header_split_over_pieces() -> None:
    decoder = codec.FrameDecoder(max_frame=8)
    decoder.receive_data(codec.frame(b"ok")[:3])
    decoder.receive_data(codec.frame(b"ok")[3:] + struct.pack(">I", 9)[:2])
    assert decoder.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge, match="frame of 9 bytes"):
        decoder.receive_data(struct.pack(">I", 9)[2:])
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    assert decoder.ready == 0


# ---------------------------------------------------------------- iter_frames
def test_iter_frames() -> None:
    data = codec.frame(b"one") + codec.frame(b"") + codec.frame(b"three")
    assert list(codec.iter_frames(data)) == [b"one", b"", b"three"]
    assert list(codec.iter_frames(b"")) == []
    with pytest.raises(DecodeError, match="closed inside a frame"):
        list(codec.iter_frames(data[:-1]))
    with pytest.raises(FrameTooLarge):
        list(codec.iter_frames(data, max_frame=4))
    assert list(codec.iter_frames(data, max_frame=5)) == [b"one", b"", b"three"]
