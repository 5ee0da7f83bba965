"""Reputation derived from the state database: attempts, receipts and verdicts become
observations; the book folds in only what is new, and a reopened store gives it all back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from peerd.market.reputation import Event, ReputationSettings
from peerd.market.reputation_book import ReputationBook
from peerd.state.store import Attempt, AttemptOutcome, Store, StoreError, TaskRole
from tests.state.test_store import PROVIDER, RESULT, make_receipt, make_task, with_result

P = PROVIDER.peer_id  # the provider the receipts name
OTHER = "12D3KooWother"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


async def finished(store: Store, task_id: str, *, created: float, leased: float, state: str = "succeeded") -> None:
    """A requester task leased on P at ``leased`` that came back with a receipt."""
    await store.create_task(make_task(task_id, created_at=created))
    await store.add_attempt(Attempt(task_id, 1, OTHER, AttemptOutcome.REJECTED, created + 1.0))
    await store.add_attempt(Attempt(task_id, 2, P, AttemptOutcome.ACCEPTED, leased))
    await store.put_result(with_result(RESULT, task_id=task_id, state=state))
    await store.put_receipt(task_id, make_receipt(task_id), P, "req", 1.0, leased + 10.0)


async def test_attempts_receipts_and_verdicts_become_observations(path: Path) -> None:
    async with Store.open(path) as store:
        await finished(store, "t1", created=1000.0, leased=1004.0)
        await finished(store, "t2", created=2000.0, leased=2001.0, state="failed")
        await store.create_task(make_task("t3", created_at=3000.0))
        await store.add_attempt(Attempt("t3", 1, OTHER, AttemptOutcome.LOST, 3005.0))
        await store.put_verdict("t1", P, Event.VERIFIED, 1200.0)
        await store.put_verdict("t3", OTHER, Event.DISPUTED, 3100.0)
        found, mark = await store.observations()
    events = sorted((o.provider == P, o.event.value, o.task_id) for o in found)
    assert events == [
        (False, "disputed", "t3"), (False, "lost", "t3"),
        (True, "completed", "t1"), (True, "failed", "t2"),
        (True, "leased", "t1"), (True, "leased", "t2"), (True, "verified", "t1"),
    ]  # fmt: skip
    latencies = {o.task_id: o.latency for o in found if o.event is Event.LEASED}
    assert latencies == {"t1": pytest.approx(3.0), "t2": pytest.approx(0.0)}  # since the previous attempt
    assert mark.attempts > 0 and mark.receipts > 0 and mark.verdicts > 0


async def test_provider_side_tasks_are_not_reputation(path: Path) -> None:
    async with Store.open(path) as store:
        task = dataclasses.replace(make_task("tp"), role=TaskRole.PROVIDER)
        await store.create_task(task)
        await store.add_attempt(Attempt("tp", 1, P, AttemptOutcome.ACCEPTED, 1001.0))
        await store.put_result(with_result(RESULT, task_id="tp"))
        await store.put_receipt("tp", make_receipt("tp"), P, "req", 1.0, 1010.0)
        assert (await store.observations())[0] == []


async def test_a_verdict_is_write_once_and_must_be_a_verdict(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(make_task("t1"))
        await store.put_verdict("t1", P, Event.DISPUTED, 1.0)
        await store.put_verdict("t1", P, Event.DISPUTED, 1.0)  # a retry is harmless
        with pytest.raises(StoreError):
            await store.put_verdict("t1", P, Event.VERIFIED, 1.0)
        with pytest.raises(StoreError):
            await store.put_verdict("t1", P, Event.COMPLETED, 1.0)
        assert await store.verdicts(["t1", "nope"]) == {"t1": Event.DISPUTED}


async def test_replica_groups_list_their_members_in_order(path: Path) -> None:
    async with Store.open(path) as store:
        for task_id in ("ta", "tb", "tc"):
            await store.create_task(make_task(task_id))
        await store.add_replica("ta", "ta", "replicas", 2, 0)
        await store.add_replica("tb", "ta", "replicas", 2, 1)
        assert await store.replica_group("tb") == ("ta", "replicas", 2, ["ta", "tb"])
        assert await store.replica_group("tc") is None


async def test_the_book_folds_in_only_new_rows(path: Path) -> None:
    async with Store.open(path) as store:
        book = ReputationBook(store, ReputationSettings(half_life=1e9))
        await finished(store, "t1", created=1000.0, leased=1001.0)
        assert await book.refresh() == 2  # leased + completed
        assert await book.refresh() == 0
        await store.create_task(make_task("t2"))
        await store.add_attempt(Attempt("t2", 1, P, AttemptOutcome.LOST, 1500.0))
        assert await book.refresh() == 1
        assert book.tallies[P].counts == {Event.LEASED: 1, Event.COMPLETED: 1, Event.LOST: 1}


async def test_reputation_survives_a_restart(path: Path) -> None:
    settings = ReputationSettings(half_life=1e9)
    async with Store.open(path) as store:
        book = ReputationBook(store, settings)
        await store.create_task(make_task("t1"))
        await store.add_attempt(Attempt("t1", 1, OTHER, AttemptOutcome.LOST, 1001.0))
        await book.refresh()
        before = book.standing(OTHER, 2000.0)
    assert before.distrusted
    async with Store.open(path) as store:
        again = ReputationBook(store, settings)
        await again.refresh()
        assert again.standing(OTHER, 2000.0) == before
        history = await again.history(OTHER, limit=10)
    assert [(o.event, o.task_id) for o in history] == [(Event.LOST, "t1")]


async def test_the_ranking_terms_follow_a_refresh(path: Path) -> None:
    async with Store.open(path) as store:
        book = ReputationBook(store, ReputationSettings(half_life=1e9), draw=lambda: 0.99)
        await book.refresh()
        assert book.ranking(2000.0)(OTHER).tier == book.ranking(2000.0)("never-seen").tier  # both newcomers
        await store.create_task(make_task("t1"))
        await store.add_attempt(Attempt("t1", 1, OTHER, AttemptOutcome.LOST, 1001.0))
        await book.refresh()
        assert book.ranking(2000.0)(OTHER).tier > book.ranking(2000.0)("never-seen").tier  # now distrusted
