"""Durable node state in SQLite: tasks, placement attempts, leases, results, receipts.

One file, ``<home>/state.db`` (mode 0600), one connection, WAL journal,
foreign keys on, a busy timeout. Every call runs in a worker thread
(``trio.to_thread.run_sync``) behind a ``CapacityLimiter(1)``, so the
connection is used by one thread at a time and calls are serialized in arrival
order. Every write is its own transaction and has committed when the call
returns: callers write before they act (record the lease, then start the
container; record the result, then remove it), so a restart loses nothing
that was acted on. The store never reads the clock; callers pass times.

Durability: ``synchronous=NORMAL`` by default: a commit survives a crash of
the daemon, and the database is never corrupted, but the last commits may roll
back on power loss. Leases, results and receipts are committed with
``synchronous=FULL`` (the WAL is fsynced before the call returns), because a
co-signed lease or receipt is a promise to another party and a result is
recorded just before its container is destroyed. The WAL is append-only, so
that fsync also makes every earlier NORMAL commit durable (the task row the
lease belongs to, its attempts).

Leases, results and receipts are write-once: putting the same record again is
a no-op (a retry after a crash is harmless); putting a different one raises
``AlreadyRecorded``. The one later change is retention's: it may empty a
finished result's stdout and stderr (``ResultRecord.pruned_at``; see
``peerd.state.store_retention``), after which a retried put of the same result is
still a no-op. The records and their rows live in ``peerd.state.store_records``
(re-exported here); the file format (migrations, connection settings,
transactions) and the error base in ``peerd.state.store_schema``.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Callable, Collection, Generator, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import trio

from peerd.market.reputation import Event, Observation
from peerd.state import store_reputation, store_retention
from peerd.state.store_records import (
    TASK_COLUMNS,
    Attempt,
    AttemptOutcome,
    ReceiptRecord,
    ResultRecord,
    TaskRecord,
    TaskRole,
    attempt_from_row,
    attempt_row,
    corrupt,
    receipt_from_row,
    result_from_row,
    result_row,
    task_from_row,
    task_row,
)
from peerd.state.store_reputation import START, VERDICTS, Watermark
from peerd.state.store_retention import LogHolding, TaskAge
from peerd.state.store_schema import (
    MIGRATIONS,
    Migration,
    SchemaVersionError,
    StoreError,
    StoreInfo,
    connect,
    read_info,
    transaction,
)
from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.messages import FINAL_STATES, Lease, Receipt, TaskState

DB_NAME = "state.db"
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds another connection may hold the write lock
DEFAULT_LIMIT = 100

T = TypeVar("T")


__all__ = [
    "DB_NAME",
    "AlreadyRecorded",
    "Attempt",
    "AttemptOutcome",
    "LogHolding",
    "NoSuchTask",
    "ReceiptRecord",
    "ResultRecord",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoreInfo",
    "TaskAge",
    "TaskRecord",
    "TaskRole",
    "Watermark",
    "db_path",
]


# ---------------------------------------------------------------- errors
class AlreadyRecorded(StoreError):
    """A task id, attempt number, lease, result or receipt is already recorded (differently)."""


class NoSuchTask(StoreError):
    """The task id is not in the store."""


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


# ---------------------------------------------------------------- blocking SQL (worker thread)
def _integrity(exc: sqlite3.IntegrityError, task_id: str, what: str) -> StoreError:
    """Translate a constraint failure into the error the caller can act on."""
    name = exc.sqlite_errorname
    if name == "SQLITE_CONSTRAINT_FOREIGNKEY":
        return NoSuchTask(f"no task {task_id!r} to record {what} for")
    if name in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
        return AlreadyRecorded(f"{what} for task {task_id!r} is already recorded")
    return StoreError(f"{what} for task {task_id!r} violates the schema: {exc}")


def _put_once(
    conn: sqlite3.Connection,
    table: str,
    row: dict[str, object],
    what: str,
    replace: bool = False,
    prunable: Collection[str] = (),
) -> None:
    """Insert ``row`` keyed by task_id; an identical row already there is fine, another is not.

    With ``replace`` the new row supersedes the old one (a receipt gaining its
    second signature; a lease on a new provider after the first was lost).
    Columns in ``prunable`` are not compared once retention pruned the row
    (``pruned_at`` set): a retried put of the same record is still a no-op.
    """
    task_id = str(row["task_id"])
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != "task_id")
    conflict = f"ON CONFLICT (task_id) DO UPDATE SET {updates}" if replace else "ON CONFLICT DO NOTHING"

    def body() -> None:
        try:
            sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) {conflict}"
            cur = conn.execute(sql, tuple(row.values()))
        except sqlite3.IntegrityError as exc:
            raise _integrity(exc, task_id, what) from exc
        if cur.rowcount == 1:
            return
        pruned = ", pruned_at IS NOT NULL AS pruned" if prunable else ", 0 AS pruned"
        existing = conn.execute(
            f"SELECT {columns}{pruned} FROM {table} WHERE task_id = ?", (task_id,)
        ).fetchone()
        compared = [c for c in row if not (existing["pruned"] and c in prunable)]
        if [existing[c] for c in compared] != [row[c] for c in compared]:
            raise AlreadyRecorded(f"a different {what} is already recorded for task {task_id!r}")

    transaction(conn, body, durable=True)


def _insert(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], task_id: str, what: str
) -> None:
    def body() -> None:
        try:
            conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise _integrity(exc, task_id, what) from exc

    transaction(conn, body)


def _update_task(conn: sqlite3.Connection, task_id: str, changes: dict[str, object]) -> TaskRecord:
    assignments = ", ".join(f"{column} = ?" for column in changes)

    def body() -> TaskRecord:
        cur = conn.execute(
            f"UPDATE tasks SET {assignments} WHERE task_id = ?", (*changes.values(), task_id)
        )
        if cur.rowcount == 0:
            raise NoSuchTask(f"no task {task_id!r} to update")
        row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return task_from_row(row.fetchone())

    return transaction(conn, body)


def _select(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


# ---------------------------------------------------------------- the async API
class Store:
    """The node's state database. Get one with ``Store.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> _Opening:
        """``await Store.open(path)`` or ``async with Store.open(path) as store``.

        Creates the file (0600) if needed and migrates it to the latest schema;
        ``migrations`` is the schema history (tests pass their own).
        """
        return _Opening(path, busy_timeout, migrations)

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        """Wait for the call in flight, then close; idempotent and shielded from cancellation."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(self._call, op, limiter=self._limiter)

    def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self._path}: the store is closed")
        try:
            return op(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from exc

    async def info(self) -> StoreInfo:
        return await self._run(partial(read_info, path=self._path))

    # ------------------------------------------------------------ tasks
    async def create_task(self, record: TaskRecord) -> None:
        """Record a new task; ``AlreadyRecorded`` if its id exists."""
        row = task_row(record)
        sql = f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * len(row))})"
        await self._run(partial(_insert, sql=sql, params=row, task_id=record.task_id, what="task"))

    async def update_task(
        self,
        task_id: str,
        *,
        now: float,
        state: TaskState | _Unset = _UNSET,
        provider: str | _Unset | None = _UNSET,
        price: float | _Unset | None = _UNSET,
        exit_code: int | _Unset | None = _UNSET,
        detail: str | _Unset = _UNSET,
        gpus: Sequence[str] | _Unset = _UNSET,
        container: str | _Unset | None = _UNSET,
    ) -> TaskRecord:
        """Change the given fields, set ``updated_at = now``; return the new record.

        ``NoSuchTask`` if the id is unknown. Passing ``None`` clears a nullable field.
        """
        given: dict[str, object] = {
            "state": _UNSET if state is _UNSET else TaskState(state).value,
            "provider": provider,
            "price": price,
            "exit_code": exit_code,
            "detail": detail,
            "gpus": _UNSET if isinstance(gpus, _Unset) else json.dumps(list(gpus)),
            "container": container,
        }
        changes = {column: value for column, value in given.items() if value is not _UNSET}
        changes["updated_at"] = now
        return await self._run(partial(_update_task, task_id=task_id, changes=changes))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        return task_from_row(rows[0]) if rows else None

    async def list_tasks(
        self,
        role: TaskRole | None = None,
        states: Collection[TaskState] | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally only one role and only some states."""
        if limit < 1 or (states is not None and not states):
            return []
        where, params = ["task_id NOT IN (SELECT task_id FROM gang_ranks)"], list[object]()  # a gang is one task
        if role is not None:
            where.append("role = ?")
            params.append(TaskRole(role).value)
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(TaskState(s).value for s in states)
        sql = (
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        rows = await self._run(partial(_select, sql=sql, params=(*params, limit)))
        return [task_from_row(row) for row in rows]

    async def count_tasks(self) -> dict[tuple[str, str], int]:
        """How many tasks there are per (role, state)."""
        sql = "SELECT role, state, COUNT(*) AS n FROM tasks GROUP BY role, state"
        rows = await self._run(partial(_select, sql=sql, params=()))
        return {(row["role"], row["state"]): int(row["n"]) for row in rows}

    async def unfinished_tasks(self, role: TaskRole) -> list[TaskRecord]:
        """Every task of ``role`` not in a final state, oldest first (to reconcile on restart)."""
        finals = sorted(s.value for s in FINAL_STATES)
        sql = (
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE role = ? "
            f"AND state NOT IN ({', '.join('?' * len(finals))}) ORDER BY created_at, rowid"
        )
        rows = await self._run(partial(_select, sql=sql, params=(TaskRole(role).value, *finals)))
        return [task_from_row(row) for row in rows]

    # ------------------------------------------------------------ gangs
    async def add_gang_rank(self, task_id: str, gang_id: str, rank: int) -> None:
        """Record that task ``task_id`` runs rank ``rank`` of the gang task ``gang_id``."""
        sql = "INSERT INTO gang_ranks (task_id, gang_id, rank) VALUES (?, ?, ?)"
        await self._run(partial(_insert, sql=sql, params=(task_id, gang_id, rank), task_id=task_id, what="gang rank"))

    async def gang_ranks(self, gang_id: str) -> list[tuple[int, str]]:
        """The (rank, task id) of every rank task of ``gang_id``, by rank (later placements after earlier)."""
        sql = "SELECT rank, task_id FROM gang_ranks WHERE gang_id = ? ORDER BY rank, rowid"
        rows = await self._run(partial(_select, sql=sql, params=(gang_id,)))
        return [(int(row["rank"]), str(row["task_id"])) for row in rows]

    async def gang_of(self, task_id: str) -> str | None:
        """The gang task a rank task belongs to, or None."""
        rows = await self._run(partial(_select, sql="SELECT gang_id FROM gang_ranks WHERE task_id = ?",
                                       params=(task_id,)))
        return str(rows[0]["gang_id"]) if rows else None

    # ------------------------------------------------------------ the requester's queue
    async def put_queue_terms(self, task_id: str, priority: int, deadline: float) -> None:
        """How ``task_id`` waits for capacity (``peerd.jobs.queue.QueueTerms``), recorded with the task."""
        sql = "INSERT INTO task_queue (task_id, priority, deadline) VALUES (?, ?, ?)"
        await self._run(partial(_insert, sql=sql, params=(task_id, priority, deadline), task_id=task_id,
                                what="queue terms"))

    async def queue_terms(self, task_id: str) -> tuple[int, float, float | None] | None:
        """(priority, deadline, queued_at) of a task, or None if it has none."""
        sql = "SELECT priority, deadline, queued_at FROM task_queue WHERE task_id = ?"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        if not rows:
            return None
        row = rows[0]
        return int(row["priority"]), float(row["deadline"]), row["queued_at"]

    async def mark_queued(self, task_id: str, at: float) -> float:
        """Note when the task first waited for room (kept on later waits); that time."""

        def op(conn: sqlite3.Connection) -> float:
            def body() -> float:
                conn.execute("UPDATE task_queue SET queued_at = ? WHERE task_id = ? AND queued_at IS NULL",
                             (at, task_id))
                row = conn.execute("SELECT queued_at FROM task_queue WHERE task_id = ?", (task_id,)).fetchone()
                return at if row is None or row["queued_at"] is None else float(row["queued_at"])

            return transaction(conn, body)

        return await self._run(op)

    # ------------------------------------------------------------ attempts
    async def add_attempt(self, attempt: Attempt) -> None:
        """Append to the task's placement log; ``AlreadyRecorded`` if entry ``n`` exists."""
        row = attempt_row(attempt)
        sql = f"INSERT INTO attempts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        what = f"attempt {attempt.n}"
        await self._run(partial(_insert, sql=sql, params=tuple(row.values()), task_id=attempt.task_id, what=what))

    async def attempts(self, task_id: str) -> list[Attempt]:
        """The task's placement log in order of ``n``."""
        sql = "SELECT * FROM attempts WHERE task_id = ? ORDER BY n"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        return [attempt_from_row(row) for row in rows]

    async def superseded_leases(self) -> list[Attempt]:
        """LOST attempts that left a lease behind (``signed``) and no later SUPERSEDED entry
        for the same provider: leases the requester moved on from but has not ended yet."""
        sql = (
            "SELECT * FROM attempts AS a WHERE a.outcome = ? AND a.signed IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM attempts AS b WHERE b.task_id = a.task_id AND b.provider = a.provider "
            "AND b.n > a.n AND b.outcome = ?) ORDER BY a.at, a.task_id, a.n"
        )
        params = (AttemptOutcome.LOST.value, AttemptOutcome.SUPERSEDED.value)
        rows = await self._run(partial(_select, sql=sql, params=params))
        return [attempt_from_row(row) for row in rows]

    # ------------------------------------------------------------ leases, results, receipts
    async def put_lease(self, task_id: str, lease: Lease, expires_at: float, *, replace: bool = False) -> None:
        """Record the co-signed lease (durably, write-once unless ``replace``) before acting on it."""
        row: dict[str, object] = {
            "task_id": task_id,
            "terms": lease.terms,
            "provider_sig": lease.provider_sig,
            "requester_sig": lease.requester_sig,
            "expires_at": expires_at,
        }
        await self._run(partial(_put_once, table="leases", row=row, what="lease", replace=replace))

    async def get_lease(self, task_id: str) -> Lease | None:
        sql = "SELECT terms, provider_sig, requester_sig FROM leases WHERE task_id = ?"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        if not rows:
            return None
        try:
            return Lease(rows[0]["terms"], rows[0]["provider_sig"], rows[0]["requester_sig"])
        except ProtocolError as exc:
            raise corrupt("lease", task_id, exc) from exc

    async def put_result(self, record: ResultRecord) -> None:
        """Record how the task ended (durably, write-once) before its container goes."""
        row: dict[str, object] = result_row(record)
        put = partial(_put_once, table="results", row=row, what="result", prunable=("stdout", "stderr"))
        await self._run(put)

    async def get_result(self, task_id: str) -> ResultRecord | None:
        sql = "SELECT * FROM results WHERE task_id = ?"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        return result_from_row(rows[0]) if rows else None

    async def put_receipt(
        self,
        task_id: str,
        receipt: Receipt,
        provider: str,
        requester: str,
        cost: float,
        finished_at: float,
        *,
        replace: bool = False,
    ) -> None:
        """Record the receipt (durably, write-once unless ``replace``), stored as its encoded bytes."""
        try:
            encoded = encode(receipt)
        except ProtocolError as exc:
            raise StoreError(f"cannot encode the receipt for task {task_id!r}: {exc}") from exc
        row: dict[str, object] = {
            "task_id": task_id,
            "encoded": encoded,
            "provider": provider,
            "requester": requester,
            "cost": cost,
            "finished_at": finished_at,
            "cosigned": int(bool(receipt.provider_sig and receipt.requester_sig)),
        }
        await self._run(partial(_put_once, table="receipts", row=row, what="receipt", replace=replace))

    async def get_receipt(self, task_id: str) -> Receipt | None:
        sql = "SELECT * FROM receipts WHERE task_id = ?"
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        return receipt_from_row(rows[0]).receipt if rows else None

    async def list_receipts(self, limit: int = DEFAULT_LIMIT) -> list[ReceiptRecord]:
        """Receipts, most recently finished first."""
        sql = "SELECT * FROM receipts ORDER BY finished_at DESC, rowid DESC LIMIT ?"
        rows = await self._run(partial(_select, sql=sql, params=(max(limit, 0),)))
        return [receipt_from_row(row) for row in rows]

    # ------------------------------------------------------------ reputation and verification
    async def observations(
        self, after: Watermark = START, provider: str | None = None
    ) -> tuple[list[Observation], Watermark]:
        """Reputation events derived from the records (see ``peerd.state.store_reputation``)
        after ``after``, about ``provider`` only if given; and the next watermark."""
        return await self._run(partial(store_reputation.observations, after=after, provider=provider))

    async def add_replica(self, task_id: str, group_id: str, mode: str, size: int, idx: int) -> None:
        """Record that ``task_id`` is replica ``idx`` of ``size`` in ``group_id``."""
        sql = "INSERT INTO replicas (task_id, group_id, mode, size, idx) VALUES (?, ?, ?, ?, ?)"
        params = (task_id, group_id, mode, size, idx)
        await self._run(partial(_insert, sql=sql, params=params, task_id=task_id, what="replica"))

    async def replica_group(self, task_id: str) -> tuple[str, str, int, list[str]] | None:
        """For a task in a replica group: (group id, mode, size, its replicas' task ids in order)."""
        sql = (
            "SELECT r.group_id, r.mode, r.size, r.task_id FROM replicas AS r WHERE r.group_id = "
            "(SELECT group_id FROM replicas WHERE task_id = ?) ORDER BY r.idx"
        )
        rows = await self._run(partial(_select, sql=sql, params=(task_id,)))
        if not rows:
            return None
        return rows[0]["group_id"], rows[0]["mode"], rows[0]["size"], [row["task_id"] for row in rows]

    async def put_verdict(self, task_id: str, provider: str, verdict: Event, at: float) -> None:
        """Record (durably, write-once) what comparing replicas found about one replica's provider."""
        if verdict not in VERDICTS:
            raise StoreError(f"{verdict!r} is not a verdict")
        row: dict[str, object] = {"task_id": task_id, "provider": provider, "verdict": Event(verdict).value, "at": at}
        await self._run(partial(_put_once, table="verdicts", row=row, what="verdict"))

    async def verdicts(self, task_ids: Sequence[str]) -> dict[str, Event]:
        """The verdicts recorded for these tasks."""
        if not task_ids:
            return {}
        sql = f"SELECT task_id, verdict FROM verdicts WHERE task_id IN ({', '.join('?' * len(task_ids))})"
        rows = await self._run(partial(_select, sql=sql, params=tuple(task_ids)))
        return {row["task_id"]: Event(row["verdict"]) for row in rows}

    # ------------------------------------------------------------ retention (peerd.state.store_retention)
    async def log_holdings(self, now: float) -> list[LogHolding]:
        """Results still holding log bytes, oldest first, and whether each may be pruned at ``now``."""
        return await self._run(partial(store_retention.log_holdings, now=now))

    async def task_ages(self, task_ids: Collection[str]) -> dict[str, TaskAge]:
        """For the known tasks among ``task_ids``: final or not, and when last updated."""
        if not task_ids:
            return {}
        return await self._run(partial(store_retention.task_ages, task_ids=task_ids))

    async def prune_logs(self, task_ids: Collection[str], now: float) -> int:
        """Empty the stdout/stderr of those results that may be pruned; the number pruned."""
        if not task_ids:
            return 0
        return await self._run(partial(store_retention.prune_logs, task_ids=task_ids, now=now))

    async def reclaim(self) -> int:
        """Return free pages to the file system and truncate the WAL; pages given back."""
        return await self._run(store_retention.reclaim)


class _Opening:
    """What ``Store.open`` returns: await it, or use it as an async context manager."""

    def __init__(self, path: Path, busy_timeout: float, migrations: Sequence[Migration]) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._migrations = tuple(migrations)
        self._store: Store | None = None

    async def _open(self) -> Store:
        conn = await trio.to_thread.run_sync(
            connect, self._path, self._busy_timeout, self._migrations
        )
        return Store(conn, self._path)

    def __await__(self) -> Generator[object, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def db_path(home: Path) -> Path:
    """Where a node keeps its state database."""
    return home / DB_NAME
