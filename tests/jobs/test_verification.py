"""The replica comparison rule (``peerd.verification.compare``)."""

from __future__ import annotations

import random

from peerd.jobs.verification import VerificationState, Vote, compare, spot_check_size
from peerd.market.reputation import Event

GOOD, BAD = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def votes(*keys: tuple[str, int]) -> list[Vote]:
    return [Vote(f"t{i}", out, code) for i, (out, code) in enumerate(keys)]


def test_all_equal_is_verified_and_everyone_verified() -> None:
    got = compare(votes((GOOD, 0), (GOOD, 0)), size=2)
    assert got.state is VerificationState.VERIFIED and got.winner == (GOOD, 0)
    assert got.verdicts == {"t0": Event.VERIFIED, "t1": Event.VERIFIED}


def test_a_liar_is_out_voted_and_disputed() -> None:
    got = compare(votes((GOOD, 0), (BAD, 0), (GOOD, 0)), size=3)
    assert got.state is VerificationState.MAJORITY and got.winner == (GOOD, 0)
    assert got.verdicts == {"t0": Event.VERIFIED, "t1": Event.DISPUTED, "t2": Event.VERIFIED}


def test_a_different_exit_code_is_a_different_result() -> None:
    got = compare(votes((GOOD, 0), (GOOD, 1), (GOOD, 0)), size=3)
    assert got.verdicts["t1"] is Event.DISPUTED


def test_no_majority_is_disputed_with_no_winner_and_nobody_blamed_alone() -> None:
    got = compare(votes((GOOD, 0), (BAD, 0)), size=2)
    assert got.state is VerificationState.DISPUTED and got.winner is None
    assert set(got.verdicts.values()) == {Event.INCONCLUSIVE}
    tie = compare(votes((GOOD, 0), (GOOD, 0), (BAD, 0), (BAD, 0)), size=4)
    assert tie.state is VerificationState.DISPUTED


def test_a_majority_is_of_k_not_of_those_that_came_back() -> None:
    two_of_three = compare(votes((GOOD, 0), (GOOD, 0)), size=3)  # the third was lost: still 2 > 3/2
    assert two_of_three.state is VerificationState.VERIFIED
    one_each_of_five = compare(votes((GOOD, 0), (GOOD, 0), (BAD, 0)), size=5)  # 2 is not > 5/2
    assert one_each_of_five.state is VerificationState.DISPUTED


def test_fewer_than_two_votes_cannot_be_verified() -> None:
    assert compare(votes((GOOD, 0)), size=2).state is VerificationState.UNVERIFIED
    assert compare([], size=3) == compare([], size=3)
    assert compare([], size=3).verdicts == {}


def test_a_spot_check_doubles_a_fraction_p_of_jobs() -> None:
    assert spot_check_size(0.3, lambda: 0.29) == 2 and spot_check_size(0.3, lambda: 0.3) == 1
    assert spot_check_size(0.0, lambda: 0.0) == 1 and spot_check_size(1.0, lambda: 0.999) == 2
    rng = random.Random(7)
    extra = sum(spot_check_size(0.2, rng.random) - 1 for _ in range(10_000)) / 10_000
    assert 0.18 < extra < 0.22  # the expected extra cost is P
