"""The placement log (peerd.jobs.attemptlog): one entry per new answer, read as a person reads it."""

from __future__ import annotations

from peerd.jobs.attemptlog import describe, next_attempt, not_placed_reason
from peerd.state.store import Attempt, AttemptOutcome
from protocol.messages import RejectCode

P1, P2 = "12D3KooWProviderOne0000", "12D3KooWProviderTwo0000"


def log_of(*answers: tuple[str, AttemptOutcome, str, str]) -> list[Attempt]:
    entries: list[Attempt] = []
    for provider, outcome, code, detail in answers:
        entry = next_attempt(entries, "t1", provider, outcome, code, detail, None, at=float(len(entries)))
        if entry is not None:
            entries.append(entry)
    return entries


def test_a_reject_code_is_the_entry_s_reason_and_another_code_goes_into_its_detail() -> None:
    busy, broke = log_of((P1, AttemptOutcome.REJECTED, "busy", "8 jobs running"),
                         (P2, AttemptOutcome.ERROR, "bad_message", "cannot decode"))
    assert (busy.n, busy.reason_code, busy.detail) == (1, RejectCode.BUSY, "8 jobs running")
    assert (broke.n, broke.reason_code, broke.detail) == (2, None, "bad_message: cannot decode")


def test_a_queued_task_asking_again_logs_each_answer_once_until_it_is_leased() -> None:
    busy = (P1, AttemptOutcome.REJECTED, "busy", "8 jobs running")
    entries = log_of(busy, busy, (P2, AttemptOutcome.REJECTED, "busy", "full"), busy)
    assert [(a.provider, a.reason_code) for a in entries] == [(P1, RejectCode.BUSY), (P2, RejectCode.BUSY)]
    # after a lease (then lost), the same answer is news again
    again = log_of(busy, (P1, AttemptOutcome.ACCEPTED, "", "leased"), busy)
    assert [a.outcome for a in again] == [AttemptOutcome.REJECTED, AttemptOutcome.ACCEPTED, AttemptOutcome.REJECTED]


def test_a_long_detail_is_cut_to_1024_characters() -> None:
    (entry,) = log_of((P1, AttemptOutcome.ERROR, "", "x" * 5000))
    assert len(entry.detail) == 1024


def test_the_not_placed_reason_names_every_answer_or_that_nobody_fits() -> None:
    entries = log_of((P1, AttemptOutcome.REJECTED, "busy", "8 jobs running"),
                     (P2, AttemptOutcome.TIMEOUT, "", "placement deadline passed"))
    assert describe(entries[0]) == "12D3KooWProvider…: rejected busy 8 jobs running"
    reason = not_placed_reason(entries, local=False, waited=False)
    assert reason.startswith("not placed after 2 attempt(s): 12D3KooWProvider…: rejected busy")
    assert reason.endswith("timeout placement deadline passed")
    assert not_placed_reason(entries, local=False, waited=True).startswith("not placed within its queue timeout")
    assert "in the peer table" in not_placed_reason([], local=False, waited=False)
    assert "in this node" in not_placed_reason([], local=True, waited=False)
