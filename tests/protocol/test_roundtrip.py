"""Every message type survives encode → decode unchanged, framed or not."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from protocol import codec, messages as m
from protocol.errors import LocalProtocolError

from .strategies import BY_TYPE, messages

FAST = settings(max_examples=40, deadline=None)


def test_every_message_type_has_a_strategy() -> None:
    assert set(BY_TYPE) == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("tag", sorted(BY_TYPE))
@FAST
@given(data=st.data())
def test_round_trip(tag: str, data: st.DataObject) -> None:
    msg = data.draw(BY_TYPE[tag])
    raw = codec.encode(msg)
    back = codec.decode(raw)
    assert back == msg
    assert type(back) is type(msg)
    assert codec.encode(back) == raw  # deterministic encoding


@FAST
@given(st.lists(messages, min_size=1, max_size=4), st.integers(1, 64))
def test_frames_survive_any_chunking(msgs: list[m.Message], chunk: int) -> None:
    stream = b"".join(codec.encode_frame(msg) for msg in msgs)
    decoder = codec.FrameDecoder()
    got: list[m.Message] = []
    for i in range(0, len(stream), chunk):
        decoder.receive_data(stream[i : i + chunk])
        while (payload := decoder.next_frame()) is not None:
            got.append(codec.decode(payload))
    decoder.receive_data(b"")
    assert decoder.next_frame() is None and decoder.closed
    assert got == msgs


def test_local_construction_normalises_types() -> None:
    spec = m.JobSpec(image="x", command=["a", "b"], cpus=2)  # type: ignore[arg-type]
    assert spec.command == ("a", "b") and type(spec.cpus) is float
    status = m.Status(task_id="t", state="running", detail="", at=0)  # type: ignore[arg-type]
    assert status.state is m.TaskState.RUNNING


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gpus": True},  # bool where int expected
        {"memory": "1"},
        {"gpus": 10**9},
        {"memory": -1},
        {"cpus": math.nan},
        {"timeout": math.inf},
        {"max_price": -0.5},
        {"env": {"A=B": "x"}},
    ],
)
def test_local_construction_refuses_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        m.JobSpec(image="x", command=(), **kwargs)  # type: ignore[arg-type]


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(m.GpuOffer(uuid="u", model="", memory=0, compute_capability=""))  # type: ignore[arg-type]


def test_frame_refuses_oversize_payload() -> None:
    with pytest.raises(LocalProtocolError):
        codec.frame(b"x" * 11, max_frame=10)
