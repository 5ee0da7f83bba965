"""peerd.state.retention: choosing what to prune, and the pruner against a real store and task dirs."""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from peerd.config import DEFAULT_CONFIG_TEXT, RetentionConfig, parse
from peerd.errors import ConfigError
from peerd.state.retention import MIN_INTERVAL, Holding, Kind, Pruner, choose
from peerd.state.store import ResultRecord, Store, TaskRecord, TaskRole, db_path
from protocol.messages import JobSpec, Result, TaskState

SPEC = JobSpec(image="peerd-test/busybox:1", command=("true",))
KIB = 1 << 10


def held(task_id: str, at: float, size: int, prunable: bool = True, kind: Kind = Kind.LOGS) -> Holding:
    return Holding(task_id, kind, at, size, prunable)


# ---------------------------------------------------------------- choose (pure)
def test_choose_takes_everything_older_than_max_age() -> None:
    holdings = [held("c", 300.0, 10), held("a", 100.0, 10), held("b", 200.0, 10)]
    chosen = choose(holdings, now=1000.0, max_age=750.0, max_size=0)
    assert [h.task_id for h in chosen] == ["a", "b"]


def test_choose_takes_oldest_first_until_under_max_size() -> None:
    holdings = [held(f"t{i}", float(i), 10) for i in range(10)]
    chosen = choose(holdings, now=1000.0, max_age=0.0, max_size=35)
    assert [h.task_id for h in chosen] == [f"t{i}" for i in range(7)]  # 30 bytes left


def test_choose_counts_but_never_takes_what_may_not_go() -> None:
    holdings = [held("running", 0.0, 100, prunable=False), held("old", 1.0, 10), held("new", 2.0, 10)]
    chosen = choose(holdings, now=1000.0, max_age=0.0, max_size=50)
    assert [h.task_id for h in chosen] == ["old", "new"]  # still over: the running task's 100


def test_choose_with_no_limits_takes_nothing() -> None:
    holdings = [held("a", 0.0, 1 << 40)]
    assert choose(holdings, now=1e9, max_age=0.0, max_size=0) == []


def test_choose_weighs_logs_and_directories_of_a_task_separately() -> None:
    holdings = [held("a", 1.0, 10, kind=Kind.DIR), held("a", 1.0, 10), held("b", 2.0, 10)]
    chosen = choose(holdings, now=10.0, max_age=0.0, max_size=15)
    assert [(h.task_id, h.kind) for h in chosen] == [("a", Kind.DIR), ("a", Kind.LOGS)]


# ---------------------------------------------------------------- the pruner, real store and files
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def add_task(
    store: Store, task_id: str, *, finished_at: float | None, log_bytes: int = 0
) -> None:
    """A requester-side task: finished at ``finished_at`` with that much output, or running."""
    state = TaskState.RUNNING if finished_at is None else TaskState.SUCCEEDED
    at = 0.0 if finished_at is None else finished_at
    await store.create_task(TaskRecord(task_id=task_id, role=TaskRole.REQUESTER, state=state, spec=SPEC,
                                       requester="r", created_at=at, updated_at=at))
    if finished_at is not None:
        await store.put_result(ResultRecord(
            Result(task_id, TaskState.SUCCEEDED, 0, b"o" * log_bytes, b"", "", 0, 1.0, 0.0, ""), finished_at))


def make_dir(work_dir: Path, name: str, size: int, mtime: float = 0.0) -> Path:
    task_dir = work_dir / name
    task_dir.mkdir(parents=True)
    (task_dir / "out.tar.gz").write_bytes(b"z" * size)
    os.utime(task_dir, (mtime, mtime))
    return task_dir


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(db_path(tmp_path)) as opened:
        yield opened


async def test_a_sweep_prunes_by_age_and_spares_running_and_young_tasks(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "tasks"
    await add_task(store, "old", finished_at=100.0, log_bytes=KIB)
    await add_task(store, "young", finished_at=900.0, log_bytes=KIB)
    await add_task(store, "running", finished_at=None)
    make_dir(work, "old", KIB)
    make_dir(work, "running", KIB)
    make_dir(work, "orphan", KIB, mtime=50.0)  # no task in the store: left behind by a crash
    clock = Clock(1000.0)
    pruner = Pruner(store, RetentionConfig(max_age=500.0, max_size=0), work_dir=work, clock=clock)
    sweep = await pruner.sweep()
    assert (sweep.pruned_logs, sweep.removed_dirs, sweep.freed) == (1, 2, 3 * KIB)
    assert sorted(p.name for p in work.iterdir()) == ["running"]
    old, young = await store.get_result("old"), await store.get_result("young")
    assert old is not None and old.pruned and old.result.stdout == b"" and old.result.exit_code == 0
    assert young is not None and not young.pruned and young.result.stdout == b"o" * KIB
    clock.now = 1500.0  # now "young" is old too
    sweep = await pruner.sweep()
    assert (sweep.pruned_logs, sweep.removed_dirs) == (1, 0)
    assert sweep.kept == KIB  # the running task's directory


async def test_a_sweep_prunes_oldest_first_down_to_max_size(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "tasks"
    for i in range(6):
        await add_task(store, f"t{i}", finished_at=100.0 + i, log_bytes=10 * KIB)
        make_dir(work, f"t{i}", 10 * KIB)
    pruner = Pruner(store, RetentionConfig(max_age=0.0, max_size=45 * KIB), work_dir=work, clock=Clock(200.0))
    sweep = await pruner.sweep()
    assert sweep.kept <= 45 * KIB and (sweep.pruned_logs, sweep.removed_dirs) == (4, 4)
    assert sorted(p.name for p in work.iterdir()) == ["t4", "t5"]
    assert [h.task_id for h in await store.log_holdings(200.0)] == ["t4", "t5"]


async def test_a_sweep_never_touches_a_task_the_runner_still_holds(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "tasks"
    await add_task(store, "busy", finished_at=100.0, log_bytes=KIB)  # final in the store, job not yet released
    make_dir(work, "busy", KIB)
    pruner = Pruner(store, RetentionConfig(max_age=1.0, max_size=1), work_dir=work,
                    active=lambda: {"busy"}, clock=Clock(1000.0))
    sweep = await pruner.sweep()
    assert (sweep.pruned_logs, sweep.removed_dirs, sweep.kept) == (0, 0, 2 * KIB)
    assert (work / "busy").is_dir()


async def test_a_requester_node_without_a_work_dir_prunes_its_logs(store: Store, tmp_path: Path) -> None:
    await add_task(store, "t1", finished_at=100.0, log_bytes=KIB)
    pruner = Pruner(store, RetentionConfig(max_age=10.0), work_dir=tmp_path / "absent", clock=Clock(1000.0))
    assert (await pruner.sweep()).pruned_logs == 1


async def test_the_service_sweeps_at_start_and_every_interval(store: Store) -> None:
    wall = Clock(1000.0)
    settings = RetentionConfig(max_age=60.0, max_size=0, interval=0.0)  # raised to MIN_INTERVAL
    pruner = Pruner(store, settings, work_dir=None, clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(pruner.run)
        with trio.fail_after(5):
            await pruner.wait_sweeps(1)
        first = trio.current_time()
        await add_task(store, "t1", finished_at=990.0, log_bytes=KIB)
        wall.now = 2000.0
        with trio.fail_after(MIN_INTERVAL + 5):
            await pruner.wait_sweeps(2)
        assert trio.current_time() - first >= MIN_INTERVAL
        assert pruner.last is not None and pruner.last.pruned_logs == 1
        nursery.cancel_scope.cancel()
    result = await store.get_result("t1")
    assert result is not None and result.pruned_at == 2000.0 and result.result.stdout == b""


def test_the_retention_section_parses_with_its_documented_defaults(tmp_path: Path) -> None:
    config = parse(tomllib.loads(DEFAULT_CONFIG_TEXT), home=tmp_path, source="default")
    assert config.retention == RetentionConfig() == RetentionConfig(7 * 86400.0, 1 << 30, 600.0)
    low = parse({"retention": {"max_age": "2d", "max_size": "3M", "interval": "1s"}}, home=tmp_path, source="t")
    assert low.retention == RetentionConfig(2 * 86400.0, 3 << 20, 1.0)
    with pytest.raises(ConfigError, match="retention.max_size"):
        parse({"retention": {"max_size": "lots"}}, home=tmp_path, source="t")
