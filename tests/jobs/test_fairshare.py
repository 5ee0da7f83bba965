"""The provider's fair share between requesters (peerd.jobs.fairshare): the rule alone, with a given ``now``."""

from __future__ import annotations

from peerd.jobs.fairshare import MAX_REMEMBERED, WINDOW, FairShare, Use, use_by_requester

GIB = 1 << 30
WHOLE = Use(jobs=4, cpus=8.0, memory=16 * GIB, gpus=0)  # limit 4 jobs, CPUs and memory to spare
JOB = Use(1, 0.5, GIB, 0)


def held(**jobs: int) -> dict[str, Use]:
    return use_by_requester((who, JOB) for who, n in jobs.items() for _ in range(n))


def test_nobody_waiting_changes_nothing() -> None:
    fair = FairShare()
    assert fair.refusal("a", held(a=3), WHOLE, now=0.0) is None
    assert fair.depth(0.0) == 0


def test_only_the_asking_requester_waiting_changes_nothing() -> None:
    fair = FairShare()
    fair.refused("a", 0.0)
    assert fair.refusal("a", held(a=3), WHOLE, now=1.0) is None  # work-conserving: one requester takes all


def test_a_requester_at_its_share_leaves_the_slot_to_a_waiting_one() -> None:
    fair = FairShare()
    fair.refused("b", 0.0)
    detail = fair.refusal("a", held(a=3), WHOLE, now=1.0)
    assert detail is not None
    assert detail.startswith("fair share: this requester runs 3 of the 4 job slots here")
    assert "while 1 other requester(s) wait" in detail
    assert fair.refusal("b", held(a=3), WHOLE, now=1.0) is None  # the waiting one goes ahead


def test_the_share_is_one_over_the_requesters_in_play() -> None:
    fair = FairShare()
    fair.refused("c", 0.0)
    # a, b, c in play: each is owed a third of 4 slots; a with 1 (25 %) is under it, a with 2 (50 %) over
    assert fair.refusal("a", held(a=1, b=2), WHOLE, now=1.0) is None
    assert fair.refusal("a", held(a=2, b=1), WHOLE, now=1.0) is not None
    # two in play: a's share is half; at 2 of 4 it is refused, at 1 not
    fair2 = FairShare()
    fair2.refused("b", 0.0)
    assert fair2.refusal("a", held(a=2), WHOLE, now=1.0) is not None
    assert fair2.refusal("a", held(a=1), WHOLE, now=1.0) is None


def test_no_refusal_when_every_waiting_requester_already_has_its_share() -> None:
    fair = FairShare()
    fair.refused("b", 0.0)
    assert fair.refusal("a", held(a=2, b=2), WHOLE, now=1.0) is None


def test_a_requester_with_no_job_here_is_never_refused() -> None:
    fair = FairShare()
    for i in range(10):
        fair.refused(f"w{i}", 0.0)
    assert fair.refusal("a", held(w0=4), WHOLE, now=1.0) is None


def test_the_dominant_resource_counts_not_only_job_slots() -> None:
    # limit 8 jobs but 2 CPUs: a's 3 jobs of 0.5 CPU hold 75 % of the CPUs (only 37.5 % of the slots)
    whole = Use(jobs=8, cpus=2.0, memory=16 * GIB)
    fair = FairShare()
    fair.refused("b", 0.0)
    detail = fair.refusal("a", held(a=3), whole, now=1.0)
    assert detail is not None and "75% of this provider, its share 50%" in detail
    assert Use(3, 1.5, 3 * GIB).dominant(whole) == 0.75
    assert Use().dominant(Use()) == 0.0


def test_a_waiting_requester_is_forgotten_after_the_window() -> None:
    fair = FairShare()
    fair.refused("b", 100.0)
    assert fair.waiting(100.0 + WINDOW - 0.1) == ["b"]
    assert fair.refusal("a", held(a=3), WHOLE, now=100.0 + WINDOW) is None
    assert fair.depth(100.0 + WINDOW) == 0


def test_a_new_refusal_restarts_the_window() -> None:
    fair = FairShare(window=10.0)
    fair.refused("b", 0.0)
    fair.refused("b", 8.0)
    assert fair.waiting(15.0) == ["b"]
    assert fair.waiting(18.0) == []


def test_a_requester_that_gets_a_lease_no_longer_waits() -> None:
    fair = FairShare()
    fair.refused("b", 0.0)
    fair.served("b")
    fair.served("never-seen")  # no error
    assert fair.refusal("a", held(a=3), WHOLE, now=1.0) is None
    assert fair.depth(1.0) == 0


def test_memory_is_bounded_and_the_oldest_refusal_goes_first() -> None:
    fair = FairShare()
    for i in range(MAX_REMEMBERED + 500):
        fair.refused(f"peer{i}", float(i) / 1000)
    fair.refused("peer0", 1.0)  # refused again: now the newest
    waiting = fair.waiting(1.0)
    assert len(waiting) == MAX_REMEMBERED
    assert waiting[-1] == "peer0"
    assert "peer1" not in waiting and f"peer{MAX_REMEMBERED + 499}" in waiting
    assert fair.depth(1.0) == MAX_REMEMBERED


def test_a_slot_is_kept_for_waiting_requesters_only_while_they_come_back_for_it() -> None:
    fair = FairShare(grace=5.0)
    fair.refused("b", 0.0)
    assert fair.refusal("a", held(a=3), WHOLE, now=1.0) is not None  # the free slot is kept for b
    assert fair.refusal("a", held(a=3), WHOLE, now=5.9) is not None  # b may still come (within the grace)
    assert fair.refusal("a", held(a=3), WHOLE, now=6.0) is None  # b did not: it found room elsewhere
    assert fair.depth(6.0) == 0


def test_a_waiting_requester_that_comes_back_keeps_its_claim() -> None:
    fair = FairShare(grace=5.0)
    fair.refused("b", 0.0)
    assert fair.refusal("a", held(a=3), WHOLE, now=1.0) is not None
    fair.refused("b", 4.0)  # b asked again (the slot was gone by then): it still waits
    assert fair.refusal("a", held(a=3), WHOLE, now=7.0) is not None  # the grace starts over
    assert fair.refusal("a", held(a=3), WHOLE, now=12.0) is None
