"""Reputation's view of the state database: observations derived from durable records.

Nothing about a provider's reputation is recorded twice: every
``reputation.Observation`` is read from what the requester records anyway,
on its own (requester-role) tasks:

- ``attempts``: ``accepted`` → LEASED (latency: from the task's previous
  attempt, or its creation, to the lease), ``lost`` → LOST;
- ``receipts`` with their ``results``: the provider that signed the receipt
  completed the lease: ``succeeded`` → COMPLETED, ``cancelled`` → CANCELLED,
  any other end → FAILED;
- ``verdicts`` (written by ``peerd.jobs.verification``): VERIFIED, DISPUTED,
  INCONCLUSIVE.

Rows are read after a ``Watermark`` (one rowid per table; the tables are
append-only for these purposes: an upsert keeps its rowid), so a cache
(``peerd.market.reputation_book``) folds in only what is new. Blocking; ``peerd.state.store``
runs these in its worker thread.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from peerd.market.reputation import Event, Observation
from peerd.state.store_records import AttemptOutcome, corrupt
from protocol.messages import TaskState
from protocol.roles import TaskRole


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last rowid read from each table the observations come from."""

    attempts: int = 0
    receipts: int = 0
    verdicts: int = 0


START = Watermark()  # before the first row


_ATTEMPTS = """
SELECT a.rowid AS rid, a.task_id, a.provider, a.outcome, a.at,
       a.at - COALESCE((SELECT MAX(b.at) FROM attempts AS b WHERE b.task_id = a.task_id AND b.n < a.n),
                       t.created_at) AS latency
FROM attempts AS a JOIN tasks AS t ON t.task_id = a.task_id
WHERE t.role = ? AND a.outcome IN (?, ?) AND a.rowid > ? {provider}
ORDER BY a.rowid
"""

_RECEIPTS = """
SELECT c.rowid AS rid, c.task_id, c.provider, r.state, r.finished_at AS at
FROM receipts AS c JOIN results AS r ON r.task_id = c.task_id JOIN tasks AS t ON t.task_id = c.task_id
WHERE t.role = ? AND c.rowid > ? {provider}
ORDER BY c.rowid
"""

_VERDICTS = """
SELECT v.rowid AS rid, v.task_id, v.provider, v.verdict, v.at FROM verdicts AS v
WHERE v.rowid > ? {provider} ORDER BY v.rowid
"""

_ATTEMPT_EVENTS = {AttemptOutcome.ACCEPTED.value: Event.LEASED, AttemptOutcome.LOST.value: Event.LOST}
_RESULT_EVENTS = {TaskState.SUCCEEDED.value: Event.COMPLETED, TaskState.CANCELLED.value: Event.CANCELLED}
_REQUESTER = TaskRole.REQUESTER.value
VERDICTS = frozenset({Event.VERIFIED, Event.DISPUTED, Event.INCONCLUSIVE})


def _query(sql: str, provider: str | None, alias: str) -> str:
    return sql.format(provider=f"AND {alias}.provider = ?" if provider is not None else "")


def _params(after: int, provider: str | None, *first: object) -> tuple[object, ...]:
    return (*first, after) if provider is None else (*first, after, provider)


def observations(
    conn: sqlite3.Connection, after: Watermark, provider: str | None = None
) -> tuple[list[Observation], Watermark]:
    """Every observation recorded after ``after`` (about ``provider`` only, if given),
    and the watermark to read from next time."""
    found: list[Observation] = []
    marks = [after.attempts, after.receipts, after.verdicts]
    params = _params(after.attempts, provider, _REQUESTER, *_ATTEMPT_EVENTS)
    for row in conn.execute(_query(_ATTEMPTS, provider, "a"), params).fetchall():
        event = _ATTEMPT_EVENTS[row["outcome"]]
        latency = max(float(row["latency"]), 0.0) if event is Event.LEASED else None
        found.append(Observation(row["provider"], event, row["at"], row["task_id"], latency))
        marks[0] = max(marks[0], row["rid"])
    for row in conn.execute(_query(_RECEIPTS, provider, "c"), _params(after.receipts, provider, _REQUESTER)).fetchall():
        found.append(Observation(row["provider"], _RESULT_EVENTS.get(row["state"], Event.FAILED), row["at"],
                                 row["task_id"]))
        marks[1] = max(marks[1], row["rid"])
    for row in conn.execute(_query(_VERDICTS, provider, "v"), _params(after.verdicts, provider)).fetchall():
        try:
            event = Event(row["verdict"])
        except ValueError as exc:
            raise corrupt("verdict", row["task_id"], exc) from exc
        found.append(Observation(row["provider"], event, row["at"], row["task_id"]))
        marks[2] = max(marks[2], row["rid"])
    return found, Watermark(*marks)
