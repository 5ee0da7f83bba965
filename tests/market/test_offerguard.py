"""The per-peer offer bounds (pure: ``now`` is passed in)."""

from __future__ import annotations

import pytest

from peerd.market.offerguard import GuardLimits, OfferGuard


def test_open_offers_per_peer_are_bounded_and_freed_on_close() -> None:
    guard = OfferGuard(GuardLimits(offers_per_peer=2))
    guard.opened("a")
    assert guard.refusal("a", 0) is None
    guard.opened("a")
    refusal = guard.refusal("a", 0)
    assert refusal is not None and "open" in refusal
    assert guard.refusal("b", 0) is None  # another peer is not affected
    guard.closed("a", lapsed=False, now=1)
    assert guard.refusal("a", 1) is None and guard.open_count("a") == 1
    guard.closed("a", lapsed=False, now=1)
    assert guard.open_count("a") == 0


def test_lapsed_offers_count_against_the_peer_and_decay() -> None:
    guard = OfferGuard(GuardLimits(offers_per_peer=5, lapse_limit=3, half_life=100))
    for t in (0, 1, 2):
        assert guard.refusal("squatter", t) is None  # fewer than three lapses: still served
        guard.opened("squatter")
        guard.closed("squatter", lapsed=True, now=t)
    refusal = guard.refusal("squatter", 2)
    assert refusal is not None and "lapse" in refusal
    assert guard.lapses("squatter", 2) == pytest.approx(3, rel=0.02)
    # declining with Cancel costs nothing
    guard.opened("honest")
    guard.closed("honest", lapsed=False, now=2)
    assert guard.refusal("honest", 2) is None and guard.lapses("honest", 2) == 0
    # one half-life later the squatter is at ~1.5 and may ask again
    assert guard.refusal("squatter", 102) is None
    assert guard.lapses("squatter", 102) == pytest.approx(1.5, rel=0.02)


def test_scores_kept_are_bounded_dropping_the_lowest() -> None:
    guard = OfferGuard(GuardLimits(lapse_limit=3, half_life=1000, max_peers=3))
    for _ in range(3):
        guard.closed("worst", lapsed=True, now=0)
    for n, peer in enumerate(("p1", "p2", "p3", "p4")):
        guard.closed(peer, lapsed=True, now=float(n))
    assert guard.tracked() == 3
    assert guard.refusal("worst", 3) is not None  # the one that matters is kept
    assert guard.lapses("p4", 3) == pytest.approx(1)


def test_closing_more_than_opened_never_goes_negative() -> None:
    guard = OfferGuard()
    guard.closed("x", lapsed=False, now=0)
    assert guard.open_count("x") == 0 and guard.refusal("x", 0) is None
