"""Retention's queries on the state database: which results hold log bytes, pruning them.

What may be pruned is a finished task's stdout and stderr, nothing else: the
result row keeps its state, exit code, digests, sizes and times, and leases,
receipts, attempts and task rows are never touched (they are the record of
account, and small). A pruned result has empty logs and ``pruned_at`` set, so
it reads back as pruned rather than vanishing.

A result's logs are prunable once its task is in a final state and nobody can
still ask for them: on the requester side at once (the logs were delivered to
this node); on the provider side once the requester has co-signed the receipt
(it got the result) or the lease has expired (a requester that never
co-signs cannot make a provider keep its logs past the lease).

Everything here blocks; ``peerd.store.Store`` runs it in its worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from peerd.state.store_schema import transaction
from protocol.messages import FINAL_STATES

_FINALS = ", ".join(f"'{state.value}'" for state in sorted(FINAL_STATES, key=lambda s: s.value))

# One predicate for "may be pruned at :now", over results r, tasks t, receipts c, leases l.
_PRUNABLE = f"""(
    t.state IN ({_FINALS})
    AND (t.role = 'requester' OR c.cosigned = 1 OR l.expires_at IS NULL OR l.expires_at < :now)
)"""

_FROM = """
    FROM results r
    JOIN tasks t ON t.task_id = r.task_id
    LEFT JOIN receipts c ON c.task_id = r.task_id
    LEFT JOIN leases l ON l.task_id = r.task_id
"""


@dataclass(frozen=True, slots=True)
class LogHolding:
    """One result's stored logs: how big, since when, and whether they may go now."""

    task_id: str
    finished_at: float
    size: int  # bytes of stdout + stderr
    prunable: bool


@dataclass(frozen=True, slots=True)
class TaskAge:
    """Is a task final, and when it last changed (for its task directory)."""

    final: bool
    updated_at: float


def log_holdings(conn: sqlite3.Connection, now: float) -> list[LogHolding]:
    """Every unpruned result with log bytes, oldest first."""
    sql = f"""
        SELECT r.task_id, r.finished_at, length(r.stdout) + length(r.stderr) AS size,
               {_PRUNABLE} AS prunable
        {_FROM}
        WHERE r.pruned_at IS NULL AND length(r.stdout) + length(r.stderr) > 0
        ORDER BY r.finished_at, r.task_id
    """
    rows = conn.execute(sql, {"now": now}).fetchall()
    return [LogHolding(row[0], row[1], row[2], bool(row[3])) for row in rows]


def task_ages(conn: sqlite3.Connection, task_ids: Collection[str]) -> dict[str, TaskAge]:
    """The known tasks among ``task_ids``."""
    sql = (
        f"SELECT task_id, state IN ({_FINALS}) AS final, updated_at FROM tasks "
        "WHERE task_id IN (SELECT value FROM json_each(:ids))"
    )
    rows = conn.execute(sql, {"ids": json.dumps(sorted(task_ids))}).fetchall()
    return {row[0]: TaskAge(bool(row[1]), row[2]) for row in rows}


def prune_logs(conn: sqlite3.Connection, task_ids: Collection[str], now: float) -> int:
    """Empty the logs of those results among ``task_ids`` that may be pruned; how many were."""
    sql = f"""
        UPDATE results SET stdout = x'', stderr = x'', pruned_at = :now
        WHERE pruned_at IS NULL AND task_id IN (
            SELECT r.task_id {_FROM}
            WHERE r.task_id IN (SELECT value FROM json_each(:ids)) AND {_PRUNABLE}
        )
    """

    def body() -> int:
        cur = conn.execute(sql, {"now": now, "ids": json.dumps(sorted(task_ids))})
        return cur.rowcount

    return transaction(conn, body)


def reclaim(conn: sqlite3.Connection) -> int:
    """Give free pages back to the file system; how many pages the file shrank by.

    A file created with ``auto_vacuum=INCREMENTAL`` is trimmed with
    ``incremental_vacuum``; an older file is rebuilt once with ``VACUUM``,
    which also turns incremental auto-vacuum on for it. The WAL is then
    checkpointed and truncated.
    """
    before: int = conn.execute("PRAGMA page_count").fetchone()[0]
    free: int = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if free:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            # executescript steps the pragma to completion; execute() frees one page per step
            conn.executescript("PRAGMA incremental_vacuum;")
        else:
            conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    after: int = conn.execute("PRAGMA page_count").fetchone()[0]
    return before - after
