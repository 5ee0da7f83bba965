"""Hostile input: decoders raise ProtocolError and nothing else."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec, messages as m, signing
from protocol.errors import DecodeError, FrameTooLarge, LocalProtocolError, ProtocolError

from .helpers import NOW, provider_signer, sample_advert, sample_spec
from .strategies import messages

FAST = settings(max_examples=150, deadline=None)


def only_protocol_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except ProtocolError:
        pass


def mutate(data: bytes, how: st.DataObject) -> bytes:
    """Flip, drop, insert or truncate bytes of ``data``."""
    buf = bytearray(data)
    for _ in range(how.draw(st.integers(1, 4))):
        op = how.draw(st.sampled_from(["flip", "drop", "insert", "truncate", "byte"]))
        pos = how.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << how.draw(st.integers(0, 7))
        elif op == "byte" and buf:
            buf[pos] = how.draw(st.integers(0, 255))
        elif op == "drop" and buf:
            del buf[pos]
        elif op == "insert":
            buf.insert(pos, how.draw(st.integers(0, 255)))
        else:
            del buf[pos:]
    return bytes(buf)


# ---------------------------------------------------------------- properties
@FAST
@given(st.binary(max_size=512))
def test_random_bytes_decode(data: bytes) -> None:
    only_protocol_errors(lambda: codec.decode(data))


@FAST
@given(messages, st.data())
def test_mutated_messages_decode(msg: m.Message, how: st.DataObject) -> None:
    only_protocol_errors(lambda: codec.decode(mutate(codec.encode(msg), how)))


@FAST
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(0, 1 << 16))
def test_random_chunks_through_frame_decoder(chunks: list[bytes], max_frame: int) -> None:
    def run() -> None:
        decoder = codec.FrameDecoder(max_frame)
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            while (payload := decoder.next_frame()) is not None:
                only_protocol_errors(lambda: codec.decode(payload))

    only_protocol_errors(run)


SIGNER = provider_signer()
ADVERT_BYTES = signing.seal_bytes(sample_advert(SIGNER.peer_id), SIGNER)


@FAST
@given(st.data())
def test_mutated_envelopes_and_adverts(how: st.DataObject) -> None:
    data = mutate(ADVERT_BYTES, how)
    only_protocol_errors(lambda: signing.open_envelope(data))
    check = signing.AdvertCheck(now=NOW)
    only_protocol_errors(lambda: signing.open_advert(data, source_peer=SIGNER.peer_id, check=check))


# ---------------------------------------------------------------- specific cases
def wire(msg: m.Message) -> dict[str, object]:
    value = msgpack.unpackb(codec.encode(msg), raw=False)
    assert isinstance(value, dict)
    return value


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def request_wire(**spec_changes: object) -> dict[str, object]:
    value = wire(m.TaskRequest(task_id="t", requester="r", spec=sample_spec(), sent_at=NOW))
    spec = value["spec"]
    assert isinstance(spec, dict)
    spec.update(spec_changes)
    return value


@pytest.mark.parametrize("name", ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_FOO", "DOCKER_RESOURCE_GPU", "Nvidia_x"])
def test_a_job_spec_setting_a_reserved_variable_cannot_be_made(name: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"env sets '{name}'.*reserved for the provider"):
        m.JobSpec(image="busybox", command=("true",), env={name: "all"})
    m.JobSpec(image="busybox", command=("true",), env={"MY_NVIDIA_": "1", "DOCKER_HOST": "x"})  # not reserved


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (request_wire(memory=-1), "memory"),
        (request_wire(memory=1.5), "expected int"),
        (request_wire(gpus=10**9), "gpus"),
        (request_wire(gpus=True), "expected int, got bool"),
        (request_wire(cpus=math.nan), "cpus must be in"),
        (request_wire(cpus="1"), "expected float"),
        (request_wire(command="sh -c x"), "expected array"),
        (request_wire(env={"A": 1}), "expected str"),
        (request_wire(env={"NVIDIA_VISIBLE_DEVICES": "all"}), "reserved for the provider"),
        (request_wire(env={"DOCKER_RESOURCE_GPU": "all"}), "reserved for the provider"),
        (request_wire(env={"nvidia_driver_capabilities": "all"}), "reserved for the provider"),
        (request_wire(min_cuda="twelve"), "must be a version"),
        (request_wire(image=""), "must not be empty"),
        (request_wire(image="x" * 5000), "longer than"),
        (request_wire(network=1), "expected bool"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "price": math.nan}, "price must be in"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "price": math.inf}, "price must be in"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "price": -1.0}, "price"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "extra": 1}, "unexpected fields ['extra']"),
        ({k: v for k, v in wire(m.Accept(task_id="t", price=1.0)).items() if k != "price"}, "missing field"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "t": "nope"}, "unknown message type"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "t": 7}, "unknown message type"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "v": 2}, "unsupported protocol version"),
        ({**wire(m.Accept(task_id="t", price=1.0)), "v": True}, "protocol version"),
        ({k: v for k, v in wire(m.Accept(task_id="t", price=1.0)).items() if k != "v"}, "protocol version"),
        ({**wire(m.Reject(task_id="t", code=m.RejectCode.BUSY, detail="")), "code": "nope"}, "not one of"),
        ({**wire(m.Reject(task_id="t", code=m.RejectCode.BUSY, detail="")), "code": ["busy"]}, "not one of"),
        ({**wire(m.Envelope(payload=b"", signer="s", sig=bytes(64))), "sig": bytes(63)}, "64-byte"),
        ({**wire(m.Envelope(payload=b"", signer="s", sig=bytes(64))), "payload": "text"}, "expected bytes"),
        ([1, 2, 3], "must be a map"),
    ],
)
def test_invalid_fields_are_named(value: object, needle: str) -> None:
    with pytest.raises(DecodeError, match=None) as info:
        codec.decode(pack(value))
    assert needle in str(info.value)


def test_advert_with_absurd_gpu_list() -> None:
    value = wire(sample_advert(SIGNER.peer_id))
    gpu = value["gpus"][0]  # type: ignore[index]
    value["gpus"] = [gpu] * 2000
    with pytest.raises(DecodeError, match="more than"):
        codec.decode(pack(value))


def test_nested_error_names_the_path() -> None:
    value = wire(sample_advert(SIGNER.peer_id))
    value["gpus"][1]["memory"] = -5  # type: ignore[index]
    with pytest.raises(DecodeError, match=r"Advert\.gpus.*memory"):
        codec.decode(pack(value))


def test_ext_types_are_refused() -> None:
    data = pack({"v": 1, "t": "cancel", "task_id": msgpack.ExtType(5, b"x"), "reason": ""})
    with pytest.raises(DecodeError, match="ext"):
        codec.decode(data)


def test_timestamp_ext_is_refused() -> None:
    data = msgpack.packb({"v": 1, "t": "x", "at": msgpack.Timestamp(1)}, use_bin_type=True)
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81", codec.encode(m.Cancel(task_id="t", reason="")) + b"\x00", b"\xa3ab"],
)
def test_broken_msgpack(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(DecodeError):
        codec.decode(b"\x81\xa1v\xa2\xff\xfe")


def test_truncated_frame_at_eof() -> None:
    framed = codec.encode_frame(m.Cancel(task_id="t", reason=""))
    for cut in range(1, len(framed)):
        decoder = codec.FrameDecoder()
        decoder.receive_data(framed[:cut])
        assert decoder.next_frame() is None
        decoder.receive_data(b"")
        with pytest.raises(DecodeError, match="closed inside a frame"):
            decoder.next_frame()


def test_oversize_frame_refused_at_header_before_body() -> None:
    decoder = codec.FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(struct.pack(">I", 1025))
    assert decoder.pending == 4  # only the header was ever held


def test_oversize_frame_header_split_across_chunks() -> None:
    decoder = codec.FrameDecoder(max_frame=1024)
    decoder.receive_data(b"\x00\x00")
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(b"\x10\x00")


def test_frame_before_an_oversize_header_is_still_delivered() -> None:
    ok = codec.encode(m.Cancel(task_id="t", reason=""))
    decoder = codec.FrameDecoder(max_frame=64)
    decoder.receive_data(codec.frame(ok) + struct.pack(">I", 65))
    assert decoder.next_frame() == ok
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_maximum_frame_is_accepted() -> None:
    decoder = codec.FrameDecoder(max_frame=16)
    decoder.receive_data(struct.pack(">I", 16) + b"x" * 16)
    assert decoder.next_frame() == b"x" * 16


def test_nested_envelope_is_refused() -> None:
    inner = signing.seal(m.Cancel(task_id="t", reason=""), SIGNER)
    outer = signing.seal_bytes(inner, SIGNER)
    with pytest.raises(DecodeError, match="nested"):
        signing.open_envelope(outer)


def test_repeated_map_keys_are_refused() -> None:
    # {"v": 1, "t": "cancel", "task_id": "a", "reason": "", "task_id": "b"}: which one counts?
    data = (
        b"\x85\xa1v\x01\xa1t\xa6cancel\xa7task_id\xa1a\xa6reason\xa0\xa7task_id\xa1b"
    )
    with pytest.raises(DecodeError, match="repeats a key"):
        codec.decode(data)


def test_non_string_map_keys_are_refused() -> None:
    with pytest.raises(DecodeError):
        codec.decode(pack({1: 2}))
