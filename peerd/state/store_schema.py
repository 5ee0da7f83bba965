"""The state database's file: schema migrations, connection setup, transactions.

The schema is an ordered list of migrations: step *i* (0-based) takes the file
from ``PRAGMA user_version`` *i* to *i + 1*; ``LATEST_VERSION`` is the length
of the list. ``connect`` applies every pending step and then sets
``user_version`` inside one transaction, so a failure leaves the file exactly
at the version it had; a file from a newer peerd is refused untouched.

Rules for adding a step (never edit a released one):

- append a ``Migration``; its statements run one by one with
  ``Connection.execute`` (``executescript`` would commit mid-way);
- no ``PRAGMA foreign_keys`` or ``VACUUM`` inside a step: they do nothing, or
  fail, in a transaction;
- enum-valued columns (``state``, ``outcome``, ``reason_code``) carry no CHECK
  constraint, so a new enum member needs no table rebuild; ``peerd.state.store``
  checks values against the Python enums on the way in and out.

Connection settings: WAL journal, ``synchronous=NORMAL`` (``transaction(...,
durable=True)`` commits with FULL), foreign keys on, a busy timeout,
``auto_vacuum=INCREMENTAL`` (so space freed by retention can be returned). Everything
here blocks; ``peerd.state.store`` calls it from a worker thread.

Units: timestamps are seconds since the Unix epoch (REAL), prices credits per
hour, sizes bytes, durations seconds, as in ``protocol.messages``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from peerd.errors import PeerdError

T = TypeVar("T")


# ---------------------------------------------------------------- errors
class StoreError(PeerdError):
    """The state database failed, is unusable, or refused a write."""


class SchemaVersionError(StoreError):
    """The database was written by a newer peerd (its schema version is unknown here)."""


# ---------------------------------------------------------------- schema history
@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: a description and the SQL statements it runs, in order."""

    description: str
    statements: tuple[str, ...]


_V1_TABLES = Migration(
    "tasks, attempts, leases, results, receipts",
    (
        """
        CREATE TABLE tasks (
            task_id    TEXT PRIMARY KEY NOT NULL,
            role       TEXT NOT NULL CHECK (role IN ('requester', 'provider')),
            state      TEXT NOT NULL,
            spec       BLOB NOT NULL,
            requester  TEXT NOT NULL,
            provider   TEXT,
            price      REAL,
            local      INTEGER NOT NULL DEFAULT 0 CHECK (local IN (0, 1)),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            exit_code  INTEGER,
            detail     TEXT NOT NULL DEFAULT '',
            gpus       TEXT NOT NULL DEFAULT '[]',
            container  TEXT
        ) STRICT
        """,
        """
        CREATE TABLE attempts (
            task_id     TEXT NOT NULL REFERENCES tasks (task_id),
            n           INTEGER NOT NULL CHECK (n >= 1),
            provider    TEXT NOT NULL,
            outcome     TEXT NOT NULL,
            reason_code TEXT,
            detail      TEXT NOT NULL DEFAULT '',
            signed      BLOB,
            at          REAL NOT NULL,
            PRIMARY KEY (task_id, n)
        ) STRICT
        """,
        """
        CREATE TABLE leases (
            task_id       TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            terms         BLOB NOT NULL,
            provider_sig  BLOB NOT NULL,
            requester_sig BLOB NOT NULL,
            expires_at    REAL NOT NULL
        ) STRICT
        """,
        """
        CREATE TABLE results (
            task_id       TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            state         TEXT NOT NULL,
            exit_code     INTEGER,
            stdout        BLOB NOT NULL,
            stderr        BLOB NOT NULL,
            output_digest TEXT NOT NULL,
            output_size   INTEGER NOT NULL,
            wall_time     REAL NOT NULL,
            gpu_seconds   REAL NOT NULL,
            detail        TEXT NOT NULL,
            finished_at   REAL NOT NULL
        ) STRICT
        """,
        """
        CREATE TABLE receipts (
            task_id     TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            encoded     BLOB NOT NULL,
            provider    TEXT NOT NULL,
            requester   TEXT NOT NULL,
            cost        REAL NOT NULL,
            finished_at REAL NOT NULL
        ) STRICT
        """,
    ),
)

_V2_INDEXES = Migration(
    "indexes for newest-first listings and restart reconciliation",
    (
        "CREATE INDEX tasks_by_created ON tasks (created_at)",
        "CREATE INDEX tasks_by_role_state ON tasks (role, state)",
        "CREATE INDEX receipts_by_finished ON receipts (finished_at)",
    ),
)

_V3_RETENTION = Migration(
    "retention: results.pruned_at, receipts.cosigned, unpruned results by finish time",
    (
        # when retention emptied stdout/stderr (NULL: the logs are as recorded)
        "ALTER TABLE results ADD COLUMN pruned_at REAL",
        # 1 once the receipt carries both signatures; rows from before this step count as
        # not co-signed, so retention treats them by their lease's expiry alone
        "ALTER TABLE receipts ADD COLUMN cosigned INTEGER NOT NULL DEFAULT 0 CHECK (cosigned IN (0, 1))",
        # retention's scan: only results that still hold their logs, oldest first
        "CREATE INDEX results_unpruned ON results (finished_at) WHERE pruned_at IS NULL",
    ),
)

_V4_VERIFICATION = Migration(
    "redundant execution: replica groups and their verdicts (reputation reads them)",
    (
        # one row per replica task: the group it belongs to (the group's id is its first
        # replica's task id), how the group was asked for, and its place in the group
        """
        CREATE TABLE replicas (
            task_id  TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            group_id TEXT NOT NULL,
            mode     TEXT NOT NULL,
            size     INTEGER NOT NULL CHECK (size >= 1),
            idx      INTEGER NOT NULL CHECK (idx >= 0)
        ) STRICT
        """,
        "CREATE INDEX replicas_by_group ON replicas (group_id, idx)",
        # write-once: what comparing the group's outputs found about this replica's provider
        """
        CREATE TABLE verdicts (
            task_id  TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            provider TEXT NOT NULL,
            verdict  TEXT NOT NULL,
            at       REAL NOT NULL
        ) STRICT
        """,
        "CREATE INDEX verdicts_by_provider ON verdicts (provider)",
    ),
)

_V5_GANGS = Migration(
    "gang jobs: the requester's rank tasks of each gang task",
    (
        # one row per rank of a gang (the rank's own task: its lease, result and receipt); the gang
        # itself is a task of its own (gang_id), the one the CLI shows
        """
        CREATE TABLE gang_ranks (
            task_id TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            gang_id TEXT NOT NULL REFERENCES tasks (task_id),
            rank    INTEGER NOT NULL CHECK (rank >= 0)
        ) STRICT
        """,
        "CREATE INDEX gang_ranks_by_gang ON gang_ranks (gang_id, rank)",
    ),
)

_V6_QUEUE = Migration(
    "queueing: a requester task's priority, queue deadline and when it first waited for room",
    (
        # one row per requester task that may wait for capacity (``peerd.jobs.queue``); its order is
        # the task's (created_at, rowid), so a restart re-joins the queue in submission order
        """
        CREATE TABLE task_queue (
            task_id   TEXT PRIMARY KEY NOT NULL REFERENCES tasks (task_id),
            priority  INTEGER NOT NULL,
            deadline  REAL NOT NULL,
            queued_at REAL
        ) STRICT
        """,
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    _V1_TABLES, _V2_INDEXES, _V3_RETENTION, _V4_VERIFICATION, _V5_GANGS, _V6_QUEUE,
)
LATEST_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """The connection's settings as SQLite reports them (for diagnostics)."""

    path: Path
    schema_version: int
    journal_mode: str
    synchronous: str
    foreign_keys: bool
    busy_timeout: float


def transaction(conn: sqlite3.Connection, body: Callable[[], T], *, durable: bool = False) -> T:
    """Run ``body`` in BEGIN IMMEDIATE … COMMIT; roll back if anything fails."""
    if durable:
        conn.execute("PRAGMA synchronous = FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result
    finally:
        if durable:
            conn.execute("PRAGMA synchronous = NORMAL")


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Bring the schema to ``len(migrations)`` in one transaction, or refuse a newer one."""
    target = len(migrations)

    def body() -> None:
        current = _user_version(conn)
        if current > target:
            raise SchemaVersionError(
                f"{path}: schema version {current} was written by a newer peerd "
                f"(this one knows up to {target}); upgrade peerd or move the file away"
            )
        for version in range(current + 1, target + 1):
            step = migrations[version - 1]
            try:
                for statement in step.statements:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"{path}: migration to schema version {version} ({step.description}) "
                    f"failed: {exc}; the database is left at version {current}"
                ) from exc
        if current != target:
            conn.execute(f"PRAGMA user_version = {target:d}")

    transaction(conn, body)


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    # Takes effect on a new file (before its first table) and at the next VACUUM of an
    # old one; lets retention hand freed pages back with ``PRAGMA incremental_vacuum``.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{path}: SQLite cannot use a WAL journal here (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")


def connect(path: Path, busy_timeout: float, migrations: Sequence[Migration]) -> sqlite3.Connection:
    """Open (creating 0600 if absent), configure and migrate; close again on any failure."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(  # timeout= is SQLite's busy timeout
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open the state database: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        _configure(conn)
        _migrate(conn, path, migrations)  # before WAL: a newer file is refused untouched
        _enable_wal(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: unusable state database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


_SYNCHRONOUS_NAMES = {0: "off", 1: "normal", 2: "full", 3: "extra"}


def read_info(conn: sqlite3.Connection, path: Path) -> StoreInfo:
    def pragma(name: str) -> object:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]

    return StoreInfo(
        path=path,
        schema_version=_user_version(conn),
        journal_mode=str(pragma("journal_mode")),
        synchronous=_SYNCHRONOUS_NAMES.get(int(str(pragma("synchronous"))), "unknown"),
        foreign_keys=bool(pragma("foreign_keys")),
        busy_timeout=int(str(pragma("busy_timeout"))) / 1000,
    )
