"""A provider's fair share between requesters: one requester's burst does not starve another's jobs.

A provider holds no queue (queued tasks wait at their requester and reserve
nothing here), so fairness is decided at admission. ``FairShare`` remembers the
requesters lately turned away for capacity (``busy`` at the job limit, or
``no_capacity`` from the ledger): they are *waiting*. A requester is forgotten
when it gets a lease here, or ``WINDOW`` seconds after its last refusal (it
found room elsewhere, or gave up); at most ``MAX_REMEMBERED`` are kept, the
oldest go first, so identities that cost nothing cannot grow it. A slot is kept
for the waiting ones only ``GRACE`` seconds: a waiting requester asks again as
soon as it sees room (the advert changes when a slot frees), so if the rule has
turned others away for ``GRACE`` seconds and no waiting requester came back,
they have found room elsewhere and are forgotten: a requester that left does not
keep half of this provider idle for the rest of ``WINDOW``.

The rule is max-min fairness by admission over each requester's *dominant
share* (its largest fraction of this provider's job slots, CPUs, memory or
GPUs, as in Dominant Resource Fairness): with nobody else waiting nothing
changes (work-conserving). Otherwise the requesters in play are those running
jobs here, those waiting and the one asking; each is owed ``1 / len(in play)``.
A requester at or over that share is refused (``busy``) while some waiting
requester is under it, so the next free slot goes to the one held back. A
requester with no job here is never refused by this rule.

Pure: no clock and no I/O; the provider passes ``now`` and what runs here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WINDOW = 30.0  # seconds a requester turned away for capacity counts as waiting
GRACE = 5.0  # seconds a slot is kept for waiting requesters that do not come back for it
MAX_REMEMBERED = 1024  # waiting requesters kept at most (the oldest refusal is forgotten first)


@dataclass(frozen=True, slots=True)
class Use:
    """What some jobs hold (or, for the provider, what it offers: ``whole``)."""

    jobs: int = 0
    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0

    def __add__(self, other: Use) -> Use:
        return Use(self.jobs + other.jobs, self.cpus + other.cpus, self.memory + other.memory,
                   self.gpus + other.gpus)

    def dominant(self, whole: Use) -> float:
        """The largest fraction of ``whole`` this holds (0 where ``whole`` has none of a kind)."""
        pairs = ((self.jobs, whole.jobs), (self.cpus, whole.cpus), (self.memory, whole.memory),
                 (self.gpus, whole.gpus))
        return max((used / total for used, total in pairs if total > 0), default=0.0)


def use_by_requester(jobs: Iterable[tuple[str, Use]]) -> dict[str, Use]:
    """Sum each requester's running jobs: ``(requester, use of one job)`` pairs."""
    held: dict[str, Use] = {}
    for requester, use in jobs:
        held[requester] = held.get(requester, Use()) + use
    return held


class FairShare:
    """The requesters turned away for capacity lately, and the admission rule they imply."""

    def __init__(self, *, window: float = WINDOW, grace: float = GRACE, limit: int = MAX_REMEMBERED) -> None:
        self.window = window
        self.grace = grace
        self.limit = limit
        self._refused: OrderedDict[str, float] = OrderedDict()  # requester -> its last refusal, oldest first
        self._kept_since: float | None = None  # the rule first held a slot back; None once a waiting one returns

    def refused(self, requester: str, now: float) -> None:
        """``requester`` was turned away for capacity at ``now``: it waits."""
        self._refused[requester] = now
        self._refused.move_to_end(requester)
        self._kept_since = None
        while len(self._refused) > self.limit:
            self._refused.popitem(last=False)

    def served(self, requester: str) -> None:
        """``requester`` got a lease here: it no longer waits."""
        if self._refused.pop(requester, None) is not None:
            self._kept_since = None

    def waiting(self, now: float) -> list[str]:
        """The requesters waiting at ``now``, oldest refusal first (the expired ones are forgotten)."""
        for requester, at in list(self._refused.items()):
            if now - at >= self.window:
                del self._refused[requester]
        return list(self._refused)

    def depth(self, now: float) -> int:
        """How many requesters wait (an advert's ``queue_depth``)."""
        return len(self.waiting(now))

    def refusal(self, requester: str, held: Mapping[str, Use], whole: Use, now: float) -> str | None:
        """Why ``requester`` must leave the next slot to a waiting one, or None to go ahead.

        ``held``: what each requester's running jobs hold here; ``whole``: what
        this provider offers (its job limit, CPUs, memory and GPUs). The caller
        asks only when a job slot is free (it checks its job limit first), so a
        refusal here holds a free slot back for the waiting ones (see ``GRACE``).
        """
        others = [r for r in self.waiting(now) if r != requester]
        if not others:
            return None
        in_play = set(held) | set(others) | {requester}
        share = 1.0 / len(in_play)
        mine = held.get(requester, Use())
        if mine.jobs == 0 or mine.dominant(whole) < share:
            return None
        if all(held.get(r, Use()).dominant(whole) >= share for r in others):
            return None
        if self._kept_since is None:
            self._kept_since = now
        elif now - self._kept_since >= self.grace:
            for other in others:  # none came back for the slot kept for them: they found room elsewhere
                del self._refused[other]
            self._kept_since = None
            return None
        return (
            f"fair share: this requester runs {mine.jobs} of the {whole.jobs} job slots here "
            f"({mine.dominant(whole):.0%} of this provider, its share {share:.0%}) "
            f"while {len(others)} other requester(s) wait"
        )
