"""Advert and GpuOffer bounds: the one-expression fast check accepts exactly what the field-by-field checks do."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings, strategies as st

from protocol import messages as m
from protocol.errors import LocalProtocolError

from .strategies import adverts

# Each bound of Advert._check_bounds, broken by one value (NaN fails every range).
BROKEN: list[tuple[str, object]] = [
    ("peer_id", ""), ("peer_id", "p" * 129), ("seq", -1), ("seq", m.MAX_SEQ + 1),
    ("issued_at", -1.0), ("issued_at", math.nan), ("expires_at", math.inf), ("expires_at", m.MAX_TIMESTAMP + 1),
    ("addrs", ("/ip4/1.2.3.4/tcp/1",) * 17), ("version", "v" * 65), ("cpus", -0.5), ("cpus", m.MAX_CPUS + 1),
    ("memory", -1), ("disk", m.MAX_MEMORY + 1), ("free_cpus", -1.0), ("free_memory", -1),
    ("queue_depth", -1), ("running", m.MAX_COUNT + 1), ("price_cpu_hour", -0.01), ("price_gpu_hour", math.nan),
    ("max_timeout", m.MAX_TIMEOUT + 1),
]


@pytest.mark.parametrize(("name", "bad"), BROKEN)
@settings(max_examples=5, deadline=None)
@given(advert=adverts())
def test_each_broken_bound_is_refused_naming_its_field(advert: m.Advert, name: str, bad: object) -> None:
    with pytest.raises(LocalProtocolError, match=f"Advert.{name} "):
        dataclasses.replace(advert, **{name: bad})  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(advert=adverts(), data=st.data())
def test_the_fast_check_agrees_with_the_slow_one(advert: m.Advert, data: st.DataObject) -> None:
    # Bypass construction (which checks): set raw values on a copy, then ask both checks.
    name, bad = data.draw(st.sampled_from(BROKEN + [("free_cpus", advert.cpus), ("expires_at", advert.issued_at)]))
    obj = object.__new__(m.Advert)
    for field in dataclasses.fields(m.Advert):
        object.__setattr__(obj, field.name, getattr(advert, field.name))
    assert obj._in_bounds()
    object.__setattr__(obj, name, bad)
    try:
        obj._check_bounds()
        slow_ok = True
    except LocalProtocolError:
        slow_ok = False
    assert obj._in_bounds() == slow_ok


@pytest.mark.parametrize(("name", "bad"), [("uuid", ""), ("uuid", "u" * 129), ("model", "m" * 129),
                                           ("memory", -1), ("memory", m.MAX_MEMORY + 1),
                                           ("compute_capability", "9" * 17)])
def test_gpu_offer_bounds(name: str, bad: object) -> None:
    gpu = m.GpuOffer(uuid="GPU-0", model="H100", memory=80 << 30, compute_capability="9.0")
    with pytest.raises(LocalProtocolError, match=f"GpuOffer.{name} "):
        dataclasses.replace(gpu, **{name: bad})  # type: ignore[arg-type]
