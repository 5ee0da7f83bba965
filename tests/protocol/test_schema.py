"""The invariant that lets decoding take str and float values as-is.

``schema.Struct.from_wire`` skips the converter for a wire value that already
has its field's exact type. That is safe only because every Struct's
``_check`` bounds each str field and range-checks each float field; this test
holds every message class to it.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from hypothesis import given, settings, strategies as st

from protocol import messages as m
from protocol.errors import DecodeError, LocalProtocolError
from protocol.schema import MAX_STR, Struct

from .strategies import (
    BY_TYPE,
    control_errors,
    gang_refs,
    gpu_offers,
    image_contents,
    input_refs,
    job_specs,
    overlay_endpoints,
    roster_members,
)

STRATEGIES: dict[type[Struct], st.SearchStrategy[Struct]] = {
    m.GpuOffer: gpu_offers,
    m.JobSpec: job_specs,
    m.InputRef: input_refs,
    m.ImageContent: image_contents,
    m.ControlError: control_errors,
    m.GangRef: gang_refs,
    m.OverlayEndpoint: overlay_endpoints,
    m.RosterMember: roster_members,
    **{m.MESSAGE_TYPES[tag]: strategy for tag, strategy in BY_TYPE.items()},
}


def fields_of(cls: type[Struct], tp: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] is tp]  # type: ignore[arg-type]


def test_every_struct_class_is_covered() -> None:
    structs = {
        c for c in vars(m).values()
        if isinstance(c, type) and issubclass(c, Struct) and dataclasses.is_dataclass(c)
    }
    assert structs - {m.CoSigned} == set(STRATEGIES)


@pytest.mark.parametrize("cls", sorted(STRATEGIES, key=lambda c: c.__name__))
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_str_fields_are_bounded_and_float_fields_finite(cls: type[Struct], data: st.DataObject) -> None:
    obj = data.draw(STRATEGIES[cls])
    for name in fields_of(cls, str):
        with pytest.raises(LocalProtocolError):
            dataclasses.replace(obj, **{name: "x" * (MAX_STR + 1)})  # type: ignore[type-var]
    for name in fields_of(cls, float):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(LocalProtocolError):
                dataclasses.replace(obj, **{name: bad})  # type: ignore[type-var]


def test_the_same_holds_when_decoding() -> None:
    wire = m.Accept(task_id="t", price=1.0).to_wire()
    for bad in ({"price": math.nan}, {"task_id": "x" * (MAX_STR + 1)}):
        with pytest.raises(DecodeError):
            m.Accept.from_wire({**wire, **bad}, reserved=2)
