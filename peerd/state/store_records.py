"""The state database's records, and how each becomes a row and back.

A record is what callers of ``peerd.state.store`` put and get: ``TaskRecord`` (one
task from this node's side), ``Attempt`` (one entry of its placement log),
``ResultRecord`` (the protocol ``Result`` as recorded, and when) and
``ReceiptRecord`` (a co-signed receipt with its listing figures). Enum-valued
columns are checked against the Python enums on the way out; a row that does not
convert is a ``StoreError`` naming the task ("corrupt ... in the state
database"). The SQL is ``peerd.state.store``'s; nothing here touches a connection.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from dataclasses import dataclass, fields

import msgpack

from peerd.state.store_schema import StoreError
from protocol.codec import decode_as
from protocol.errors import ProtocolError
from protocol.messages import JobSpec, Receipt, RejectCode, Result, TaskState
from protocol.roles import TaskRole


# ---------------------------------------------------------------- records
class AttemptOutcome(enum.StrEnum):
    """What one placement attempt (one exchange with one provider) came to."""

    OFFERED = "offered"  # the provider offered; not yet accepted
    ACCEPTED = "accepted"  # the offer was accepted and the lease co-signed
    DECLINED = "declined"  # the requester turned the offer down (price, expiry)
    REJECTED = "rejected"  # the provider refused: reason_code, signed reject as proof
    TIMEOUT = "timeout"  # no answer in time
    UNREACHABLE = "unreachable"  # no connection or stream to the provider
    LOST = "lost"  # leased, then the provider vanished (signed: the abandoned co-signed lease)
    ERROR = "error"  # protocol violation or local failure; see detail
    SUPERSEDED = "superseded"  # a LOST lease ended after the task moved on (signed: its receipt, if any)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task, seen from this node's side of it (``role``)."""

    task_id: str
    role: TaskRole
    state: TaskState
    spec: JobSpec
    requester: str
    created_at: float
    updated_at: float
    provider: str | None = None
    price: float | None = None
    local: bool = False
    exit_code: int | None = None
    detail: str = ""
    gpus: tuple[str, ...] = ()  # UUIDs of the GPUs leased (provider side)
    container: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """Entry ``n`` (1-based, numbered by the caller) of a task's placement log."""

    task_id: str
    n: int
    provider: str
    outcome: AttemptOutcome
    at: float
    reason_code: RejectCode | None = None
    detail: str = ""
    # proof: the raw Envelope of a signed Reject; the encoded Lease a LOST attempt abandoned;
    # the encoded co-signed Receipt of a SUPERSEDED one
    signed: bytes | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """How a task ended: the protocol ``Result`` as recorded, and when.

    ``pruned_at`` is set once retention emptied the result's ``stdout`` and
    ``stderr``; every other field (the record of account) is kept as it was recorded.
    """

    result: Result
    finished_at: float
    pruned_at: float | None = None

    @property
    def task_id(self) -> str:
        return self.result.task_id

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """A co-signed receipt with the figures listings need without decoding it."""

    task_id: str
    receipt: Receipt
    provider: str
    requester: str
    cost: float
    finished_at: float


# ---------------------------------------------------------------- row <-> record
def corrupt(what: str, key: str, exc: Exception) -> StoreError:
    return StoreError(f"corrupt {what} for task {key!r} in the state database: {exc}")


def _pack_spec(spec: JobSpec) -> bytes:
    packed: bytes = msgpack.packb(spec.to_wire(), use_bin_type=True)
    return packed


def _unpack_spec(blob: bytes, task_id: str) -> JobSpec:
    try:
        return JobSpec.from_wire(msgpack.unpackb(blob, raw=False))
    except (ProtocolError, ValueError, msgpack.UnpackException) as exc:
        raise corrupt("job spec", task_id, exc) from exc


def _unpack_gpus(text: str, task_id: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise corrupt("GPU list", task_id, exc) from exc
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise corrupt("GPU list", task_id, ValueError(f"not a list of strings: {text!r}"))
    return tuple(value)


TASK_COLUMNS = (
    "task_id, role, state, spec, requester, provider, price, local, "
    "created_at, updated_at, exit_code, detail, gpus, container"
)


def task_row(t: TaskRecord) -> tuple[object, ...]:
    return (
        t.task_id, TaskRole(t.role).value, TaskState(t.state).value, _pack_spec(t.spec),
        t.requester, t.provider, t.price, int(t.local), t.created_at, t.updated_at, t.exit_code,
        t.detail, json.dumps(list(t.gpus)), t.container,
    )  # fmt: skip


def task_from_row(row: sqlite3.Row) -> TaskRecord:
    task_id: str = row["task_id"]
    try:
        role, state = TaskRole(row["role"]), TaskState(row["state"])
    except ValueError as exc:
        raise corrupt("task row", task_id, exc) from exc
    return TaskRecord(
        task_id=task_id, role=role, state=state, spec=_unpack_spec(row["spec"], task_id),
        requester=row["requester"], created_at=row["created_at"], updated_at=row["updated_at"],
        provider=row["provider"], price=row["price"], local=bool(row["local"]),
        exit_code=row["exit_code"], detail=row["detail"], gpus=_unpack_gpus(row["gpus"], task_id),
        container=row["container"],
    )  # fmt: skip


def attempt_from_row(row: sqlite3.Row) -> Attempt:
    task_id: str = row["task_id"]
    code = row["reason_code"]
    try:
        outcome, reason = AttemptOutcome(row["outcome"]), None if code is None else RejectCode(code)
    except ValueError as exc:
        raise corrupt("attempt", task_id, exc) from exc
    return Attempt(
        task_id, row["n"], row["provider"], outcome, row["at"], reason, row["detail"], row["signed"]
    )


def attempt_row(attempt: Attempt) -> dict[str, object]:
    reason = None if attempt.reason_code is None else RejectCode(attempt.reason_code).value
    return {
        "task_id": attempt.task_id, "n": attempt.n, "provider": attempt.provider,
        "outcome": AttemptOutcome(attempt.outcome).value, "reason_code": reason, "detail": attempt.detail,
        "signed": attempt.signed, "at": attempt.at,
    }  # fmt: skip


RESULT_FIELDS = tuple(f.name for f in fields(Result))  # the results table has a column for each


def result_row(record: ResultRecord) -> dict[str, object]:
    """The row of a result as first recorded (``pruned_at`` is retention's to set)."""
    row: dict[str, object] = {name: getattr(record.result, name) for name in RESULT_FIELDS}
    row["state"] = TaskState(record.result.state).value
    row["finished_at"] = record.finished_at
    return row


def result_from_row(row: sqlite3.Row) -> ResultRecord:
    task_id: str = row["task_id"]
    try:
        result = Result(**{name: row[name] for name in RESULT_FIELDS if name != "state"}, state=TaskState(row["state"]))
    except (ProtocolError, ValueError) as exc:
        raise corrupt("result", task_id, exc) from exc
    return ResultRecord(result, row["finished_at"], row["pruned_at"])


def receipt_from_row(row: sqlite3.Row) -> ReceiptRecord:
    task_id: str = row["task_id"]
    try:
        receipt = decode_as(row["encoded"], Receipt)
    except ProtocolError as exc:
        raise corrupt("receipt", task_id, exc) from exc
    assert isinstance(receipt, Receipt)
    return ReceiptRecord(
        task_id, receipt, row["provider"], row["requester"], row["cost"], row["finished_at"]
    )
