"""``JobSpec.inputs`` (``InputRef``) and ``ReceiptTerms.staging_time``: bounds and the wire."""

from __future__ import annotations

import pytest

from protocol import codec, messages as m
from protocol.errors import DecodeError, LocalProtocolError

ID = "sha256:" + "ab" * 32


def spec(*inputs: m.InputRef) -> m.JobSpec:
    return m.JobSpec(image="busybox:1", command=("true",), inputs=inputs)


def test_inputs_round_trip_inside_a_request() -> None:
    ref = m.InputRef(manifest=ID, dest="/inputs/data", size=123)
    request = m.TaskRequest(task_id="t1", requester="peer", spec=spec(ref), sent_at=1.0)
    decoded = codec.decode_as(codec.encode(request), m.TaskRequest)
    assert isinstance(decoded, m.TaskRequest)
    assert decoded.spec.inputs == (ref,)
    assert decoded.spec.input_size == 123


@pytest.mark.parametrize("dest", ["inputs", "/", "//x", "/a/../b", "/a/./b", "/a/", "/a//b", "/a\x01b", ""])
def test_an_input_destination_must_be_absolute_and_normalised(dest: str) -> None:
    with pytest.raises(LocalProtocolError):
        m.InputRef(manifest=ID, dest=dest, size=0)


@pytest.mark.parametrize("manifest", ["", "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "md5:" + "ab" * 32])
def test_an_input_names_its_manifest_by_id(manifest: str) -> None:
    with pytest.raises(LocalProtocolError):
        m.InputRef(manifest=manifest, dest="/inputs/x", size=0)


def test_sizes_counts_and_overlaps_are_bounded() -> None:
    with pytest.raises(LocalProtocolError):
        m.InputRef(manifest=ID, dest="/inputs/x", size=(1 << 40) + 1)
    with pytest.raises(LocalProtocolError):
        spec(*(m.InputRef(manifest=ID, dest=f"/in/{i}", size=0) for i in range(17)))
    with pytest.raises(LocalProtocolError):
        spec(m.InputRef(manifest=ID, dest="/in", size=0), m.InputRef(manifest=ID, dest="/in/sub", size=0))
    assert len(spec(*(m.InputRef(manifest=ID, dest=f"/in/{i}", size=0) for i in range(16))).inputs) == 16


def test_a_spec_without_the_inputs_field_is_refused_on_the_wire() -> None:
    wire = spec().to_wire()
    del wire["inputs"]
    with pytest.raises(DecodeError, match="inputs"):
        m.JobSpec.from_wire(wire)


def test_staging_time_is_bounded_in_the_receipt() -> None:
    fields = dict(
        task_id="t1", requester="r", provider="p", lease_digest="", state=m.TaskState.SUCCEEDED, exit_code=0,
        stdout_digest="", stderr_digest="", output_digest="", output_size=0, wall_time=1.0, gpu_seconds=0.0,
        price=0.0, cost=0.0, finished_at=1.0,
    )
    assert m.ReceiptTerms(**fields, staging_time=2.5).staging_time == 2.5  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        m.ReceiptTerms(**fields, staging_time=-1.0)  # type: ignore[arg-type]
