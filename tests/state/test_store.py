"""peerd.state.store against real SQLite files: records, restarts, migrations, concurrency."""

from __future__ import annotations

import dataclasses
import signal
import sqlite3
import stat
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
import trio

from peerd.state.store import (
    AlreadyRecorded,
    Attempt,
    AttemptOutcome,
    NoSuchTask,
    ReceiptRecord,
    ResultRecord,
    SchemaVersionError,
    Store,
    StoreError,
    TaskRecord,
    TaskRole,
    db_path,
)
from peerd.state.store_schema import LATEST_VERSION, MIGRATIONS, Migration
from protocol.messages import (
    FINAL_STATES,
    JobSpec,
    Lease,
    LeaseTerms,
    Receipt,
    ReceiptTerms,
    Reject,
    RejectCode,
    Result,
    TaskState,
)
from protocol.signing import Signer, countersign, digest, propose, seal_bytes, verify_cosigned

PROVIDER = Signer.from_seed(b"p" * 32)
REQUESTER = Signer.from_seed(b"r" * 32)
SPEC = JobSpec(
    image="peerd-test/busybox:1",
    command=("sh", "-c", "echo hi"),
    env={"MODE": "fast"},
    cpus=0.5,
    memory=64 << 20,
    gpus=1,
    gpu_model="H100",
    timeout=30.0,
    max_price=2.5,
)
BROKEN = Migration("a step that fails halfway", ("CREATE TABLE half (x)", "NOT EVEN SQL"))


def make_task(task_id: str = "t1", created_at: float = 1000.0) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        role=TaskRole.REQUESTER,
        state=TaskState.PENDING,
        spec=SPEC,
        requester=REQUESTER.peer_id,
        created_at=created_at,
        updated_at=created_at,
    )


def full_task(task_id: str = "t-full") -> TaskRecord:
    """A provider-side record with every optional field set."""
    return TaskRecord(
        task_id=task_id,
        role=TaskRole.PROVIDER,
        state=TaskState.RUNNING,
        spec=SPEC,
        requester=REQUESTER.peer_id,
        created_at=1000.25,
        updated_at=1001.5,
        provider=PROVIDER.peer_id,
        price=1.75,
        local=True,
        exit_code=3,
        detail="started",
        gpus=("GPU-aaaa", "GPU-bbbb"),
        container="c0ffee",
    )


def make_lease(task_id: str) -> Lease:
    terms = LeaseTerms(
        task_id, REQUESTER.peer_id, PROVIDER.peer_id, SPEC, 1.75, ("GPU-aaaa",), 1000.0, 1060.0
    )
    return countersign(
        propose(terms, Lease, PROVIDER, as_provider=True), REQUESTER, as_provider=False
    )


def make_receipt(task_id: str, finished_at: float = 1100.0) -> Receipt:
    terms = ReceiptTerms(
        task_id, REQUESTER.peer_id, PROVIDER.peer_id, digest(b"lease"), TaskState.SUCCEEDED, 0,
        digest(b"out"), digest(b""), "", 0, 12.5, 12.5, 1.75, 0.006, finished_at,
    )  # fmt: skip
    return countersign(
        propose(terms, Receipt, PROVIDER, as_provider=True), REQUESTER, as_provider=False
    )


RESULT = ResultRecord(
    Result(
        task_id="t1",
        state=TaskState.FAILED,
        exit_code=-9,
        stdout=b"partial\x00output",
        stderr=b"killed",
        output_digest=digest(b"tarball"),
        output_size=4096,
        wall_time=12.5,
        gpu_seconds=25.0,
        detail="OOM-killed? no: exit 137",
    ),
    finished_at=1100.0,
)


def with_result(record: ResultRecord, **changes: object) -> ResultRecord:
    """``record`` with some fields of its ``Result`` changed (its task id, say)."""
    return dataclasses.replace(record, result=dataclasses.replace(record.result, **changes))


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def user_version(path: Path) -> int:
    with raw(path) as conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def table_names(path: Path) -> set[str]:
    with raw(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
        return {name for (name,) in rows if not name.startswith("sqlite_")}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return db_path(tmp_path)


# ---------------------------------------------------------------- round trips
async def test_task_round_trip_keeps_every_field(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(full_task())
        await store.create_task(make_task())
        assert await store.get_task("t-full") == full_task()
        assert await store.get_task("t1") == make_task()
        assert await store.get_task("nope") is None


async def test_duplicate_task_id_is_refused(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(make_task())
        with pytest.raises(AlreadyRecorded, match="task 't1' is already recorded"):
            await store.create_task(dataclasses.replace(make_task(), role=TaskRole.PROVIDER))
        assert (await store.get_task("t1")) == make_task()


async def test_update_changes_only_given_fields(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(full_task())
        updated = await store.update_task(
            "t-full", now=1200.0, state=TaskState.SUCCEEDED, exit_code=0, provider=None, gpus=[]
        )
        expected = dataclasses.replace(
            full_task(),
            state=TaskState.SUCCEEDED,
            exit_code=0,
            provider=None,
            gpus=(),
            updated_at=1200.0,
        )
        assert updated == expected
        assert await store.get_task("t-full") == expected
        with pytest.raises(NoSuchTask, match="'ghost'"):
            await store.update_task("ghost", now=1.0, state=TaskState.LOST)


async def test_list_tasks_newest_first_with_filters(path: Path) -> None:
    async with Store.open(path) as store:
        for i, state in enumerate([TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCEEDED]):
            await store.create_task(dataclasses.replace(make_task(f"r{i}", 100.0 + i), state=state))
        await store.create_task(dataclasses.replace(full_task("p0"), created_at=50.0))

        assert [t.task_id for t in await store.list_tasks()] == ["r2", "r1", "r0", "p0"]
        assert [t.task_id for t in await store.list_tasks(limit=2)] == ["r2", "r1"]
        requester = await store.list_tasks(role=TaskRole.REQUESTER)
        assert [t.task_id for t in requester] == ["r2", "r1", "r0"]
        running = await store.list_tasks(states={TaskState.RUNNING})
        assert [t.task_id for t in running] == ["r1", "p0"]
        both = await store.list_tasks(TaskRole.PROVIDER, [TaskState.RUNNING, TaskState.PENDING])
        assert [t.task_id for t in both] == ["p0"]
        assert await store.list_tasks(states=[]) == []


async def test_unfinished_tasks_are_the_non_final_ones_of_a_role(path: Path) -> None:
    async with Store.open(path) as store:
        for i, state in enumerate(TaskState):
            await store.create_task(
                dataclasses.replace(make_task(f"r-{state}", 100.0 - i), state=state)
            )
        await store.create_task(full_task("p-running"))
        unfinished = await store.unfinished_tasks(TaskRole.REQUESTER)
        # oldest first: created_at decreases along TaskState's order
        expected = [f"r-{s}" for s in reversed(TaskState) if s not in FINAL_STATES]
        assert [t.task_id for t in unfinished] == expected
        assert "r-staging" in expected and "r-running" in expected and "r-succeeded" not in expected
        provider = await store.unfinished_tasks(TaskRole.PROVIDER)
        assert [t.task_id for t in provider] == ["p-running"]


async def test_attempts_keep_order_reasons_and_signed_rejects(path: Path) -> None:
    signed = seal_bytes(Reject("t1", RejectCode.NO_MATCHING_GPU, "no H100 here"), PROVIDER)
    log = [
        Attempt("t1", 1, "peerA", AttemptOutcome.UNREACHABLE, 1001.0, detail="dial timed out"),
        Attempt("t1", 2, PROVIDER.peer_id, AttemptOutcome.REJECTED, 1002.0, RejectCode.NO_MATCHING_GPU,
                "no H100 here", signed),
        Attempt("t1", 3, "peerC", AttemptOutcome.OFFERED, 1003.0),
    ]  # fmt: skip
    async with Store.open(path) as store:
        await store.create_task(make_task())
        for attempt in reversed(log):
            await store.add_attempt(attempt)
        assert await store.attempts("t1") == log
        assert await store.attempts("other") == []
        with pytest.raises(AlreadyRecorded, match="attempt 2"):
            await store.add_attempt(dataclasses.replace(log[1], outcome=AttemptOutcome.ERROR))
        with pytest.raises(NoSuchTask, match="'ghost'"):
            await store.add_attempt(dataclasses.replace(log[0], task_id="ghost"))


async def test_lease_round_trip_is_exact_and_write_once(path: Path) -> None:
    lease = make_lease("t1")
    async with Store.open(path) as store:
        await store.create_task(make_task())
        assert await store.get_lease("t1") is None
        await store.put_lease("t1", lease, expires_at=1060.0)
        await store.put_lease("t1", lease, expires_at=1060.0)  # a retry is harmless
        got = await store.get_lease("t1")
        assert got == lease
        assert got is not None and verify_cosigned(got, LeaseTerms).task_id == "t1"
        other = make_lease("t1-other")
        with pytest.raises(AlreadyRecorded, match="different lease"):
            await store.put_lease("t1", other, expires_at=1060.0)
        with pytest.raises(NoSuchTask, match="'ghost'"):
            await store.put_lease("ghost", lease, expires_at=1060.0)


async def test_result_round_trip_and_protocol_conversion(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(make_task())
        assert await store.get_result("t1") is None
        await store.put_result(RESULT)
        await store.put_result(RESULT)
        got = await store.get_result("t1")
        assert got == RESULT and got.task_id == "t1"
        with pytest.raises(AlreadyRecorded, match="different result"):
            await store.put_result(with_result(RESULT, exit_code=0))
        with pytest.raises(AlreadyRecorded, match="different result"):
            await store.put_result(dataclasses.replace(RESULT, finished_at=1101.0))
        with pytest.raises(NoSuchTask):
            await store.put_result(with_result(RESULT, task_id="t2"))


async def test_receipts_round_trip_and_list_newest_first(path: Path) -> None:
    async with Store.open(path) as store:
        for i in range(3):
            await store.create_task(make_task(f"t{i}"))
            receipt = make_receipt(f"t{i}", 1100.0 + i)
            await store.put_receipt(
                f"t{i}", receipt, PROVIDER.peer_id, REQUESTER.peer_id, 0.5 * i, 1100.0 + i
            )
        assert await store.get_receipt("t9") is None
        got = await store.get_receipt("t1")
        assert got == make_receipt("t1", 1101.0)
        assert got is not None and verify_cosigned(got, ReceiptTerms).finished_at == 1101.0
        listed = await store.list_receipts(limit=2)
        assert listed == [
            ReceiptRecord(
                "t2", make_receipt("t2", 1102.0), PROVIDER.peer_id, REQUESTER.peer_id, 1.0, 1102.0
            ),
            ReceiptRecord(
                "t1", make_receipt("t1", 1101.0), PROVIDER.peer_id, REQUESTER.peer_id, 0.5, 1101.0
            ),
        ]
        with pytest.raises(AlreadyRecorded, match="different receipt"):
            await store.put_receipt("t1", got, PROVIDER.peer_id, REQUESTER.peer_id, 9.0, 1101.0)


# ---------------------------------------------------------------- restarts
async def fill(store: Store) -> None:
    await store.create_task(full_task())
    await store.add_attempt(Attempt("t-full", 1, PROVIDER.peer_id, AttemptOutcome.ACCEPTED, 1000.5))
    await store.put_lease("t-full", make_lease("t-full"), 1060.0)
    await store.put_result(with_result(RESULT, task_id="t-full"))
    await store.put_receipt(
        "t-full", make_receipt("t-full"), PROVIDER.peer_id, REQUESTER.peer_id, 0.01, 1100.0
    )


async def check_filled(store: Store) -> None:
    assert await store.get_task("t-full") == full_task()
    assert await store.attempts("t-full") == [
        Attempt("t-full", 1, PROVIDER.peer_id, AttemptOutcome.ACCEPTED, 1000.5)
    ]
    assert await store.get_lease("t-full") == make_lease("t-full")
    assert await store.get_result("t-full") == with_result(RESULT, task_id="t-full")
    assert await store.get_receipt("t-full") == make_receipt("t-full")
    assert [t.task_id for t in await store.unfinished_tasks(TaskRole.PROVIDER)] == ["t-full"]


async def test_close_and_reopen_keeps_everything(path: Path) -> None:
    async with Store.open(path) as store:
        await fill(store)
    store = await Store.open(path)
    try:
        await check_filled(store)
    finally:
        await store.close()


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import trio
    from tests.state.test_store import Store, fill

    async def main() -> None:
        store = await Store.open(Path(sys.argv[1]))
        await fill(store)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: a crashed daemon

    trio.run(main)
    """
)


async def test_a_killed_daemon_loses_no_committed_record(path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    child = await trio.run_process([sys.executable, "-c", CHILD, str(path)], check=False, cwd=root)
    assert child.returncode == -signal.SIGKILL
    async with Store.open(path) as store:
        await check_filled(store)


# ---------------------------------------------------------------- settings
async def test_settings_wal_foreign_keys_busy_timeout_private_file(path: Path) -> None:
    async with Store.open(path) as store:
        info = await store.info()
        assert (info.journal_mode, info.synchronous) == ("wal", "normal")
        assert info.foreign_keys and info.busy_timeout == 5.0
        assert info.schema_version == LATEST_VERSION
        await store.create_task(make_task())
        await store.put_lease("t1", make_lease("t1"), 1060.0)  # committed with FULL
        assert (await store.info()).synchronous == "normal"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with raw(path) as conn:  # WAL is a property of the file, seen by any connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_busy_timeout_waits_then_fails_cleanly(path: Path) -> None:
    async with Store.open(path, busy_timeout=0.2) as store:
        other = raw(path)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                await store.create_task(make_task())
            assert time.monotonic() - started >= 0.2
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.create_task(make_task())
        assert await store.get_task("t1") == make_task()


async def test_concurrent_writers_from_many_tasks(path: Path) -> None:
    async with Store.open(path) as store:

        async def writer(w: int) -> None:
            for i in range(10):
                task_id = f"w{w}-{i}"
                await store.create_task(make_task(task_id, float(w * 100 + i)))
                await store.add_attempt(Attempt(task_id, 1, "peer", AttemptOutcome.OFFERED, 1.0))
                await store.update_task(task_id, now=2.0, state=TaskState.RUNNING)

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
        tasks = await store.list_tasks(limit=1000)
        assert len(tasks) == 80
        assert {t.state for t in tasks} == {TaskState.RUNNING}
        assert len(await store.attempts("w7-9")) == 1


async def test_closed_store_refuses_calls(path: Path) -> None:
    store = await Store.open(path)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get_task("t1")


async def test_unusable_files_are_store_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await Store.open(garbage)
    with pytest.raises(StoreError, match="cannot open"):
        await Store.open(tmp_path / "missing-dir" / "state.db")


async def test_corrupt_row_is_reported_not_guessed(path: Path) -> None:
    async with Store.open(path) as store:
        await store.create_task(make_task())
        with raw(path) as conn:
            conn.execute("UPDATE tasks SET state = 'bogus' WHERE task_id = 't1'")
        with pytest.raises(StoreError, match="corrupt task row for task 't1'"):
            await store.get_task("t1")
        await store.put_result(RESULT)
        with raw(path) as conn:  # a result the protocol would refuse: a negative wall time
            conn.execute("UPDATE results SET wall_time = -1 WHERE task_id = 't1'")
        with pytest.raises(StoreError, match="corrupt result for task 't1'"):
            await store.get_result("t1")


# ---------------------------------------------------------------- migrations
async def test_a_new_file_is_migrated_from_version_0(path: Path) -> None:
    async with Store.open(path):
        pass
    assert user_version(path) == LATEST_VERSION == len(MIGRATIONS)
    assert {
        "tasks",
        "attempts",
        "leases",
        "results",
        "receipts",
        "tasks_by_created",
    } <= table_names(path)


async def test_a_version_1_file_is_migrated_keeping_its_rows(path: Path) -> None:
    with raw(path) as conn:
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO tasks (task_id, role, state, spec, requester, created_at, updated_at) "
            "VALUES ('old', 'requester', 'running', ?, ?, 10.0, 11.0)",
            (msgpack.packb(SPEC.to_wire()), REQUESTER.peer_id),
        )
    assert "tasks_by_created" not in table_names(path)
    async with Store.open(path) as store:
        assert (await store.info()).schema_version == LATEST_VERSION
        old = await store.get_task("old")
    assert old == dataclasses.replace(
        make_task("old", 10.0), state=TaskState.RUNNING, updated_at=11.0
    )
    assert "tasks_by_created" in table_names(path)


async def test_a_file_from_a_newer_peerd_is_refused_untouched(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match=rf"version {LATEST_VERSION + 1} .*newer peerd"):
        await Store.open(path)
    assert user_version(path) == LATEST_VERSION + 1
    assert table_names(path) == {"future"}
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


async def test_a_failed_migration_leaves_a_new_file_at_version_0(path: Path) -> None:
    with pytest.raises(StoreError, match=r"migration to schema version 2 .*left at version 0"):
        await Store.open(path, migrations=(MIGRATIONS[0], BROKEN))
    assert user_version(path) == 0
    assert table_names(path) == set()


async def test_a_failed_migration_leaves_the_old_version_and_its_data(path: Path) -> None:
    async with Store.open(path) as store:
        await fill(store)
    with pytest.raises(StoreError, match=f"left at version {LATEST_VERSION}"):
        await Store.open(path, migrations=(*MIGRATIONS, BROKEN))
    assert user_version(path) == LATEST_VERSION
    assert "half" not in table_names(path)
    async with Store.open(path) as store:
        await check_filled(store)


async def test_count_tasks_groups_by_role_and_state(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "state.db") as store:
        for n, (role, state) in enumerate([
            (TaskRole.REQUESTER, TaskState.SUCCEEDED),
            (TaskRole.REQUESTER, TaskState.SUCCEEDED),
            (TaskRole.PROVIDER, TaskState.RUNNING),
        ]):
            await store.create_task(TaskRecord(
                task_id=f"c{n}", role=role, state=state, spec=JobSpec(image="i", command=("x",)),
                requester="r", created_at=float(n), updated_at=float(n),
            ))
        assert await store.count_tasks() == {("requester", "succeeded"): 2, ("provider", "running"): 1}


# ---------------------------------------------------------------- retention
LOGS = ResultRecord(Result(
    task_id="t1", state=TaskState.SUCCEEDED, exit_code=0, stdout=b"o" * 3000, stderr=b"e" * 1000,
    output_digest=digest(b"tarball"), output_size=10, wall_time=1.0, gpu_seconds=0.0, detail="",
), finished_at=1100.0)  # fmt: skip
NOW = 2000.0


def proposed_receipt(task_id: str) -> Receipt:
    """The provider's proposal: not yet co-signed by the requester."""
    return dataclasses.replace(make_receipt(task_id), requester_sig=b"")


async def add_finished(
    store: Store,
    task_id: str,
    *,
    role: TaskRole = TaskRole.PROVIDER,
    state: TaskState = TaskState.SUCCEEDED,
    finished_at: float = 1100.0,
    lease_expires: float = NOW + 60,
    cosigned: bool = True,
    result: ResultRecord = LOGS,
) -> None:
    task = dataclasses.replace(make_task(task_id), role=role, state=state)
    await store.create_task(task)
    await store.put_lease(task_id, make_lease(task_id), lease_expires)
    await store.put_result(dataclasses.replace(with_result(result, task_id=task_id), finished_at=finished_at))
    receipt = make_receipt(task_id) if cosigned else proposed_receipt(task_id)
    await store.put_receipt(task_id, receipt, PROVIDER.peer_id, REQUESTER.peer_id, 0.01, finished_at)


async def test_log_holdings_say_which_results_may_be_pruned(path: Path) -> None:
    async with Store.open(path) as store:
        await add_finished(store, "requester", role=TaskRole.REQUESTER, cosigned=False, finished_at=1101.0)
        await add_finished(store, "cosigned", finished_at=1102.0)
        await add_finished(store, "unsigned", cosigned=False, finished_at=1103.0)
        await add_finished(store, "expired", cosigned=False, lease_expires=NOW - 1, finished_at=1104.0)
        await add_finished(store, "running", state=TaskState.RUNNING, finished_at=1105.0)
        await add_finished(store, "silent", result=with_result(LOGS, stdout=b"", stderr=b""))
        holdings = await store.log_holdings(NOW)
    assert [(h.task_id, h.size, h.prunable) for h in holdings] == [
        ("requester", 4000, True),  # delivered to this node
        ("cosigned", 4000, True),  # the requester has the result
        ("unsigned", 4000, False),  # the requester may still resume and fetch it
        ("expired", 4000, True),  # ... but not past its lease
        ("running", 4000, False),  # not final
    ]  # "silent" holds no log bytes


async def test_pruning_empties_logs_and_keeps_the_record_of_account(path: Path) -> None:
    async with Store.open(path) as store:
        await add_finished(store, "old")
        await add_finished(store, "unsigned", cosigned=False)
        before = await store.get_result("old")
        assert before is not None and not before.pruned
        assert await store.prune_logs(["old", "unsigned", "ghost"], NOW) == 1
        after = await store.get_result("old")
        assert after == dataclasses.replace(with_result(before, stdout=b"", stderr=b""), pruned_at=NOW)
        assert after.pruned and after.result.exit_code == 0
        assert await store.get_receipt("old") == make_receipt("old")
        assert await store.get_lease("old") == make_lease("old")
        assert (await store.get_task("old")) is not None
        assert await store.get_result("unsigned") == with_result(LOGS, task_id="unsigned")
        assert await store.prune_logs(["old"], NOW + 1) == 0  # already pruned: pruned_at stays
        assert (await store.get_result("old")) == after
        await store.put_result(before)  # a retried put of the same record is still a no-op
        with pytest.raises(AlreadyRecorded, match="different result"):
            await store.put_result(with_result(before, exit_code=1))
        assert [h.task_id for h in await store.log_holdings(NOW)] == ["unsigned"]


async def test_a_receipt_gaining_its_second_signature_makes_the_logs_prunable(path: Path) -> None:
    async with Store.open(path) as store:
        await add_finished(store, "t1", cosigned=False)
        assert [h.prunable for h in await store.log_holdings(NOW)] == [False]
        await store.put_receipt(
            "t1", make_receipt("t1"), PROVIDER.peer_id, REQUESTER.peer_id, 0.01, 1100.0, replace=True
        )
        assert [h.prunable for h in await store.log_holdings(NOW)] == [True]


def file_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def fill_big(store: Store, count: int, size: int = 1 << 20) -> list[str]:
    big = with_result(LOGS, stdout=b"x" * size, stderr=b"")
    ids = [f"big{i}" for i in range(count)]
    for i, task_id in enumerate(ids):
        await add_finished(store, task_id, role=TaskRole.REQUESTER, result=big, finished_at=1000.0 + i)
    return ids


async def test_reclaim_gives_pruned_pages_back_to_the_file_system(path: Path) -> None:
    async with Store.open(path) as store:
        ids = await fill_big(store, 8)
        await store.reclaim()
        full = file_bytes(path)
        assert full > 8 << 20
        assert await store.prune_logs(ids, NOW) == 8
        assert await store.reclaim() > 2000  # pages of 4 KiB: the 8 MiB of logs
        emptied = file_bytes(path)
    print(f"state.db: {full} bytes with 8 MiB of logs, {emptied} after pruning and reclaiming")
    assert emptied < 1 << 20


async def test_reclaim_converts_a_file_made_before_incremental_vacuum(path: Path) -> None:
    with raw(path) as conn:  # as an older peerd left it: auto_vacuum NONE, schema version 2
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO tasks (task_id, role, state, spec, requester, created_at, updated_at) "
            "VALUES ('old', 'provider', 'succeeded', ?, ?, 10.0, 11.0)",
            (msgpack.packb(SPEC.to_wire()), REQUESTER.peer_id),
        )
        conn.execute("INSERT INTO receipts VALUES ('old', ?, 'p', 'r', 0.5, 11.0)", (b"\x80",))
    async with Store.open(path) as store:
        with raw(path) as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
            # receipts from before count as not co-signed: their logs wait for the lease's expiry
            assert conn.execute("SELECT cosigned FROM receipts").fetchall() == [(0,)]
        ids = await fill_big(store, 4)
        await store.prune_logs(ids, NOW)
        await store.reclaim()
        with raw(path) as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
        assert file_bytes(path) < 1 << 20
        assert await store.count_tasks() == {("provider", "succeeded"): 1, ("requester", "succeeded"): 4}
