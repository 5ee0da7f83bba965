"""A task's placement log: which provider answered what, written once per answer, read by people.

Pure: the requester passes the log so far and the time; the store keeps the entries.
A queued task asks again and again, so an answer the log already holds since the
task's last lease (same provider, outcome and reason) is not written twice.
"""

from __future__ import annotations

import itertools

from peerd.state.store import Attempt, AttemptOutcome
from protocol.messages import RejectCode

_REJECT_CODES = frozenset(code.value for code in RejectCode)


def next_attempt(log_so_far: list[Attempt], task_id: str, provider: str, outcome: AttemptOutcome, code: str,
                 detail: str, signed: bytes | None, at: float) -> Attempt | None:
    """The entry to append for this answer, or None if the log holds it since the last lease.
    ``code`` is a reject code (kept as the entry's reason) or another wire code (kept in its detail)."""
    reason_code = RejectCode(code) if code in _REJECT_CODES else None
    if code and reason_code is None:
        detail = f"{code}: {detail}"
    since_lease = itertools.takewhile(lambda a: a.outcome is not AttemptOutcome.ACCEPTED, reversed(log_so_far))
    if outcome is not AttemptOutcome.ACCEPTED and any(
        (a.provider, a.outcome, a.reason_code) == (provider, outcome, reason_code) for a in since_lease
    ):
        return None
    return Attempt(task_id=task_id, n=len(log_so_far) + 1, provider=provider, outcome=outcome,
                   reason_code=reason_code, detail=detail[:1024], signed=signed, at=at)


def describe(attempt: Attempt) -> str:
    """One entry as a person reads it."""
    return " ".join(filter(None, (f"{attempt.provider[:16]}…:", attempt.outcome.value, attempt.reason_code or "",
                                  attempt.detail)))


def not_placed_reason(attempts: list[Attempt], *, local: bool, waited: bool) -> str:
    """Why a task ends ``not_placed``: every answer it had, or that nobody could run it."""
    if not attempts:
        where = "this node" if local else "the peer table"
        return f"no provider in {where} can run this job (cpus, memory, GPUs, price or image)"
    when = "within its queue timeout" if waited else f"after {len(attempts)} attempt(s)"
    return f"not placed {when}: " + "; ".join(describe(a) for a in attempts)
