"""The capacity ledger: exclusive GPUs, holds that lapse, release on every path, rebuild."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from peerd.executor import CapacityError, CapacityLedger, Reason
from peerd.host.nvml import H100, FakeNvml, GpuInfo

GiB = 1 << 30
A100 = GpuInfo(
    index=0, uuid="GPU-a100", name="NVIDIA A100-SXM4-40GB", memory_total=40 * GiB, memory_free=40 * GiB,
    utilization=3, driver_version="550.54.15", compute_capability="8.0",
)


def mixed_gpus() -> list[GpuInfo]:
    """Two H100s (80 GB) and two A100s (40 GB), as NVML would list them."""
    h100s = FakeNvml.identical(2, H100, seed=1).read()
    a100s = FakeNvml.identical(2, A100, seed=2).read()
    return h100s + [replace(a, index=a.index + 2) for a in a100s]


def ledger() -> CapacityLedger:
    return CapacityLedger(cpus=8, memory=32 * GiB, gpus=mixed_gpus())


def test_gpus_are_leased_exclusively_by_model_and_memory() -> None:
    book = ledger()
    first = book.reserve("t1", cpus=1, memory=GiB, gpu_count=1, gpu_model="h100", now=0, hold_until=10)
    second = book.reserve("t2", cpus=1, memory=GiB, gpu_count=1, gpu_model="H100", now=0, hold_until=10)
    assert first.gpus != second.gpus and {*first.gpus, *second.gpus} == {g.uuid for g in mixed_gpus()[:2]}
    with pytest.raises(CapacityError) as busy:
        book.reserve("t3", cpus=1, memory=GiB, gpu_count=1, gpu_model="H100", now=0, hold_until=10)
    assert busy.value.reason is Reason.NO_CAPACITY
    big = book.reserve("t4", cpus=1, memory=GiB, gpu_count=1, min_gpu_memory=40 * GiB, now=0, hold_until=10)
    assert big.gpus[0] in {g.uuid for g in mixed_gpus()[2:]}


def test_no_such_gpu_is_no_matching_gpu_not_no_capacity() -> None:
    book = ledger()
    with pytest.raises(CapacityError) as wrong_model:
        book.reserve("t1", cpus=1, memory=GiB, gpu_count=1, gpu_model="V100", now=0, hold_until=1)
    with pytest.raises(CapacityError) as too_small:
        book.reserve("t2", cpus=1, memory=GiB, gpu_count=1, min_gpu_memory=100 * GiB, now=0, hold_until=1)
    with pytest.raises(CapacityError) as too_many:
        book.reserve("t3", cpus=1, memory=GiB, gpu_count=3, gpu_model="A100", now=0, hold_until=1)
    assert {e.value.reason for e in (wrong_model, too_small, too_many)} == {Reason.NO_MATCHING_GPU}
    assert book.reservations() == ()


def test_cpu_and_memory_capacity() -> None:
    book = ledger()
    book.reserve("t1", cpus=6, memory=30 * GiB, now=0, hold_until=1)
    with pytest.raises(CapacityError) as cpus:
        book.reserve("t2", cpus=2.5, memory=GiB, now=0, hold_until=1)
    with pytest.raises(CapacityError) as memory:
        book.reserve("t3", cpus=1, memory=3 * GiB, now=0, hold_until=1)
    assert cpus.value.reason is memory.value.reason is Reason.NO_CAPACITY
    assert book.free().cpus == 2 and book.free().memory == 2 * GiB


def test_holds_lapse_unless_confirmed() -> None:
    book = ledger()
    book.reserve("held", cpus=4, memory=GiB, gpu_count=4, now=0, hold_until=5)
    book.reserve("kept", cpus=4, memory=GiB, now=0, hold_until=5)
    assert book.confirm("kept", now=4).confirmed
    assert [r.task_id for r in book.expire(5)] == ["held"]
    assert len(book.free().gpus) == 4 and book.free().cpus == 4
    book.reserve("late", cpus=1, memory=GiB, now=6, hold_until=7)
    with pytest.raises(CapacityError) as lapsed:
        book.confirm("late", now=7)
    assert lapsed.value.reason is Reason.RESERVATION_EXPIRED and book.reservation("late") is None
    with pytest.raises(CapacityError) as unknown:
        book.confirm("never")
    assert unknown.value.reason is Reason.UNKNOWN_RESERVATION


def test_reserve_expires_lapsed_holds_first_and_refuses_duplicates() -> None:
    book = ledger()
    book.reserve("t1", cpus=8, memory=GiB, now=0, hold_until=1)
    with pytest.raises(CapacityError) as dup:
        book.reserve("t1", cpus=1, memory=GiB, now=0.5, hold_until=2)
    assert dup.value.reason is Reason.DUPLICATE_TASK
    assert book.reserve("t2", cpus=8, memory=GiB, now=1, hold_until=2).cpus == 8


def test_release_is_idempotent() -> None:
    book = ledger()
    book.reserve("t1", cpus=1, memory=GiB, gpu_count=2, now=0, hold_until=1)
    assert book.release("t1") is not None and book.release("t1") is None
    assert len(book.free().gpus) == 4


def test_rebuild_adopts_live_allocations_and_refuses_double_claims() -> None:
    gpus = mixed_gpus()
    book = CapacityLedger(cpus=8, memory=32 * GiB, gpus=gpus)
    live = book.reserve("live", cpus=2, memory=GiB, gpu_count=1, now=0, hold_until=1)
    rebuilt = CapacityLedger.rebuild(cpus=8, memory=32 * GiB, gpus=gpus, live=[book.confirm("live")])
    assert rebuilt.reservation("live") == book.reservation("live")
    assert live.gpus[0] not in {g.uuid for g in rebuilt.free().gpus}
    with pytest.raises(CapacityError) as conflict:
        rebuilt.adopt("other", cpus=1, memory=GiB, gpus=live.gpus)
    assert conflict.value.reason is Reason.GPU_CONFLICT
    gone = rebuilt.adopt("gone-gpu", cpus=1, memory=GiB, gpus=("GPU-removed",))
    assert gone.gpus == ()


TASKS = st.sampled_from([f"task-{i}" for i in range(6)])


class LedgerMachine(RuleBasedStateMachine):
    """Random reserve / confirm / release / expire / crash sequences against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.gpus = mixed_gpus()
        self.book = CapacityLedger(cpus=8, memory=16 * GiB, gpus=self.gpus)
        self.now = 0.0
        self.model: dict[str, tuple[float, int, frozenset[str], float | None]] = {}

    @rule(task=TASKS, cpus=st.sampled_from([0.5, 1.0, 2.0, 4.0]), memory=st.integers(0, 8), count=st.integers(0, 3),
          model=st.sampled_from([None, "H100", "a100", "V100"]), hold=st.floats(0.5, 5.0))
    def reserve(self, task: str, cpus: float, memory: int, count: int, model: str | None, hold: float) -> None:
        self._expire_model()
        try:
            r = self.book.reserve(task, cpus=cpus, memory=memory * GiB, gpu_count=count, gpu_model=model,
                                  now=self.now, hold_until=self.now + hold)
        except CapacityError as exc:
            assert exc.reason in {Reason.NO_CAPACITY, Reason.NO_MATCHING_GPU, Reason.DUPLICATE_TASK}
            if exc.reason is Reason.DUPLICATE_TASK:
                assert task in self.model
            return
        assert task not in self.model and len(r.gpus) == count
        matching = {g.uuid for g in self.gpus if model is None or model.lower() in g.name.lower()}
        assert set(r.gpus) <= matching
        self.model[task] = (cpus, memory * GiB, frozenset(r.gpus), self.now + hold)

    @rule(task=TASKS)
    def confirm(self, task: str) -> None:
        try:
            self.book.confirm(task, now=self.now)
        except CapacityError as exc:
            held = self.model.pop(task, None)
            if exc.reason is Reason.UNKNOWN_RESERVATION:
                assert held is None
            else:
                assert exc.reason is Reason.RESERVATION_EXPIRED and held is not None
            return
        cpus, memory, gpus, _ = self.model[task]
        self.model[task] = (cpus, memory, gpus, None)

    @rule(task=TASKS)
    def release(self, task: str) -> None:
        self.book.release(task)
        self.model.pop(task, None)

    @rule(step=st.floats(0.0, 3.0))
    def tick(self, step: float) -> None:
        self.now += step
        self.book.expire(self.now)
        self._expire_model()

    @rule()
    def crash_and_rebuild(self) -> None:
        """The daemon dies: holds vanish, confirmed allocations come back from live tasks."""
        live = [r for r in self.book.reservations() if r.confirmed]
        self.book = CapacityLedger.rebuild(cpus=8, memory=16 * GiB, gpus=self.gpus, live=live)
        self.model = {t: m for t, m in self.model.items() if m[3] is None}

    def _expire_model(self) -> None:
        self.model = {t: m for t, m in self.model.items() if m[3] is None or m[3] > self.now}

    @invariant()
    def never_double_assigned_never_leaked(self) -> None:
        held = [g for r in self.book.reservations() for g in r.gpus]
        assert len(held) == len(set(held))  # no GPU twice
        free = {g.uuid for g in self.book.free().gpus}
        assert free.isdisjoint(held) and free | set(held) == {g.uuid for g in self.gpus}  # none lost
        assert {r.task_id: frozenset(r.gpus) for r in self.book.reservations()} == {
            t: m[2] for t, m in self.model.items()
        }
        assert self.book.free().cpus == pytest.approx(8 - sum(m[0] for m in self.model.values()))
        assert self.book.free().memory == 16 * GiB - sum(m[1] for m in self.model.values())
        assert self.book.free().cpus >= -1e-9 and self.book.free().memory >= 0

    def teardown(self) -> None:
        for r in self.book.reservations():
            self.book.release(r.task_id)
        assert len(self.book.free().gpus) == len(self.gpus) and self.book.free().cpus == 8


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase


def test_a_quote_takes_nothing_and_names_the_gpus_a_reserve_then_takes_exactly() -> None:
    book = ledger()
    quoted = book.quote(cpus=8, memory=16 * GiB, gpu_count=2, now=0)
    assert len(quoted) == 2 and book.reservations() == ()
    assert book.quote(cpus=8, memory=16 * GiB, gpu_count=2, now=0) == quoted  # a quote is not a claim
    taken = book.reserve("t1", cpus=1, memory=GiB, gpu_count=2, gpus=quoted, now=0, hold_until=5)
    assert taken.gpus == quoted
    # the same GPUs cannot be taken twice: the later accept of a shared quote is refused
    with pytest.raises(CapacityError) as raised:
        book.reserve("t2", cpus=1, memory=GiB, gpu_count=2, gpus=quoted, now=0, hold_until=5)
    assert raised.value.reason is Reason.NO_CAPACITY
    with pytest.raises(CapacityError):
        book.reserve("t3", cpus=1, memory=GiB, gpu_count=2, gpus=(quoted[0], quoted[0]), now=0, hold_until=5)
    with pytest.raises(CapacityError):
        book.quote(cpus=8, memory=GiB, now=0)  # one CPU is held now


def test_a_quote_prefers_gpus_no_other_quote_named() -> None:
    book = ledger()
    first = book.quote(cpus=1, memory=GiB, gpu_count=2, now=0)
    second = book.quote(cpus=1, memory=GiB, gpu_count=2, now=0, avoid=frozenset(first))
    assert not set(first) & set(second)
    # with too few others, the avoided ones are used (a quote, not a refusal)
    third = book.quote(cpus=1, memory=GiB, gpu_count=4, now=0, avoid=frozenset(first))
    assert set(third) == {g.uuid for g in book.gpus}


def test_free_without_holds_counts_confirmed_reservations_only() -> None:
    book = ledger()
    book.reserve("held", cpus=3, memory=GiB, gpu_count=1, now=0, hold_until=5)
    book.reserve("kept", cpus=2, memory=GiB, gpu_count=1, now=0, hold_until=5)
    book.confirm("kept", now=1)
    assert book.free().cpus == 3 and len(book.free().gpus) == 2
    advertised = book.free(holds=False)
    assert advertised.cpus == 6 and advertised.memory == 31 * GiB and len(advertised.gpus) == 3


def test_a_gpu_read_again_joins_and_a_vanished_one_leaves_but_never_while_reserved() -> None:
    gpus = mixed_gpus()
    book = CapacityLedger(cpus=8, memory=32 * GiB, gpus=gpus)
    held = book.reserve("t1", cpus=1, memory=GiB, gpu_count=1, gpu_model="A100", now=0, hold_until=10)
    lost = held.gpus[0]
    assert book.update_gpus(g for g in gpus if g.uuid != lost)  # the leased A100 fell off the bus
    assert lost in {g.uuid for g in book.gpus}  # still the task's: a lease is never pulled from under it
    assert lost not in {g.uuid for g in book.free().gpus}
    with pytest.raises(CapacityError) as one_left:
        book.reserve("t2", cpus=1, memory=GiB, gpu_count=2, gpu_model="A100", now=0, hold_until=10)
    assert one_left.value.reason is Reason.NO_MATCHING_GPU  # the lost one is no longer counted as here
    book.release("t1")
    assert lost not in {g.uuid for g in book.gpus}  # gone once released
    assert not book.update_gpus(g for g in gpus if g.uuid != lost)  # nothing new
    assert book.update_gpus(gpus)  # it came back
    assert lost in {g.uuid for g in book.free().gpus}
    assert [g.index for g in book.gpus] == sorted(g.index for g in book.gpus)


def test_an_unreserved_gpu_that_vanished_leaves_at_once() -> None:
    gpus = mixed_gpus()
    book = CapacityLedger(cpus=8, memory=32 * GiB, gpus=gpus)
    assert book.update_gpus(gpus[1:])
    assert [g.uuid for g in book.gpus] == [g.uuid for g in gpus[1:]]
