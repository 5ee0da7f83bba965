"""The requester's reputation cache: per-provider tallies folded from the state database.

The store is the one source of truth (``peerd.state.store_reputation`` derives the
events from attempts, receipts and verdicts); ``ReputationBook`` keeps the
tallies in memory so that ranking, which is synchronous and runs for every
placement over the whole peer table, costs a dictionary look-up and a decay per
provider. ``refresh`` reads only the rows recorded since the last refresh (a
rowid watermark per table); the requester awaits it whenever it records
something that may change a provider's standing, before the task's new state
is visible, so a job submitted after another one finished is ranked with what
that one taught. On start the book reads the whole history: reputation survives a
restart because the records it is derived from do.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from peerd.market.reputation import (
    Observation,
    ReputationSettings,
    Standing,
    Tally,
    Trust,
    exploring,
    standing,
    trust,
)
from peerd.state.store import Store
from peerd.state.store_reputation import START

STALE_AFTER = 1 / 1000  # of a half-life: how long cached ranking terms are used
NEWCOMER = ""  # the key of a never-seen provider's terms (no peer ID is empty)


class ReputationBook:
    """Tallies per provider, refreshed from ``store``; ``draw`` decides exploratory placements."""

    def __init__(
        self, store: Store, settings: ReputationSettings | None = None, draw: Callable[[], float] = random.random
    ) -> None:
        self.store = store
        self.settings = settings or ReputationSettings()
        self.draw = draw
        self.tallies: dict[str, Tally] = {}
        self._mark = START
        self._lock = trio.Lock()
        self._terms: dict[str, tuple[Trust, Trust]] | None = None  # ranking terms, cached (see _terms_at)
        self._terms_now = 0.0

    async def refresh(self) -> int:
        """Fold in what was recorded since the last refresh; how many observations that was."""
        async with self._lock:  # one reader at a time: the watermark moves once per batch
            found, self._mark = await self.store.observations(self._mark)
            for obs in found:
                self.tallies.setdefault(obs.provider, Tally()).add(obs, self.settings.half_life)
            if found:
                self._terms = None
        return len(found)

    def standing(self, provider: str, now: float) -> Standing:
        return standing(self.tallies.get(provider), now, self.settings)

    def ranking(self, now: float) -> Callable[[str], Trust]:
        """The reputation terms for one placement's ranking (exploratory or not, drawn once)."""
        explore = int(exploring(self.draw(), self.settings))
        terms = self._terms_at(now)
        newcomer = terms[NEWCOMER]
        return lambda provider: terms.get(provider, newcomer)[explore]

    def _terms_at(self, now: float) -> dict[str, tuple[Trust, Trust]]:
        """Every provider's (plain, exploratory) terms, computed once per ``STALE_AFTER`` of a
        half-life (the decay in between moves a score by < 0.1 %) and after every refresh."""
        if self._terms is None or abs(now - self._terms_now) > self.settings.half_life * STALE_AFTER:
            settings = self.settings
            terms = {pid: (trust(standing(t, now, settings), False, settings),
                           trust(standing(t, now, settings), True, settings)) for pid, t in self.tallies.items()}
            fresh = standing(None, now, settings)
            terms[NEWCOMER] = (trust(fresh, False, settings), trust(fresh, True, settings))
            self._terms, self._terms_now = terms, now
        return self._terms

    async def history(self, provider: str, limit: int) -> list[Observation]:
        """The provider's most recent observations, newest first (read from the store)."""
        found, _ = await self.store.observations(START, provider=provider)
        found.sort(key=lambda o: o.at, reverse=True)
        return found[:limit]
