"""Provider reputation, pure: events with timestamps → decayed tallies → a score in [0, 1].

A requester keeps, per provider it dealt with, what its leases came to
(``Event``): completed, failed, lost (the provider vanished), cancelled, and
what redundant execution found (verified: its output agreed with the
majority; disputed: it was out-voted; inconclusive: no majority). The events
are derived from the state database (``peerd.state.store_reputation``); nothing here
does I/O or reads a clock.

Decay: every event's weight halves each ``half_life`` seconds, so an old
failure is forgiven and an old success no longer vouches for a provider.

Score: a Beta posterior mean. Each event adds its ``GOOD`` or ``BAD`` weight
(decayed) to the tallies, and

    score = (prior_good + good) / (prior_good + prior_bad + good + bad)

A newcomer (nothing observed) has the prior's mean, ``prior_good /
(prior_good + prior_bad)`` = 0.5 by default: neutral. One lost lease (weight
2) takes a newcomer to 0.25, one dispute (weight 4; it also completed, +1) to
0.29; an established provider with 20 completions is at 0.95 and one loss
costs it 0.08.

Ranking (``market.rank_key``): providers whose score is under
``distrust_below`` (0.35) come after every other fitting provider whatever
their price; among the rest the price is divided by ``max(score, floor)``, so
an unproven provider must be cheaper to win on price alone.

A newcomer's fair share: ``explore_share`` (10 %) of placements are
exploratory: in them, providers with little evidence (decayed tallies summing
under ``newcomer_evidence``) are ranked first, so a new provider gets about
that share of the work its fit and price would win it until it has a record;
from then on its record decides. A provider that lost or falsified a job has
evidence at once and gets no exploratory work.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Event(enum.StrEnum):
    """What a lease (or a replica's comparison) came to, from the requester's side."""

    LEASED = "leased"  # a lease was co-signed (counted, not scored: its ending is)
    COMPLETED = "completed"  # a result came back, the job succeeded
    FAILED = "failed"  # a result came back, the job failed (exit code, timeout, OOM, interrupted)
    LOST = "lost"  # leased, then the provider vanished
    CANCELLED = "cancelled"  # the requester cancelled it (not scored)
    VERIFIED = "verified"  # its output agreed with the majority of the replicas
    DISPUTED = "disputed"  # out-voted: its output disagreed with the majority
    INCONCLUSIVE = "inconclusive"  # the replicas had no majority


GOOD: Mapping[Event, float] = {Event.COMPLETED: 1.0, Event.VERIFIED: 1.0}
BAD: Mapping[Event, float] = {
    Event.FAILED: 0.25,  # usually the job's own fault: a small weight
    Event.LOST: 2.0,
    Event.DISPUTED: 4.0,
    Event.INCONCLUSIVE: 0.5,
}


@dataclass(frozen=True, slots=True)
class ReputationSettings:
    half_life: float = 7 * 86400.0  # seconds for an event's weight to halve
    prior_good: float = 1.0
    prior_bad: float = 1.0
    floor: float = 0.05  # the least score a price is divided by
    distrust_below: float = 0.35  # under this, ranked after everyone else
    explore_share: float = 0.1  # the fraction of placements that favour newcomers
    newcomer_evidence: float = 1.5  # decayed good + bad under this: still a newcomer

    def __post_init__(self) -> None:
        if self.half_life <= 0 or self.prior_good <= 0 or self.prior_bad <= 0:
            raise ValueError("half_life and the priors must be positive")
        if not 0 < self.floor <= 1 or not 0 <= self.explore_share <= 1:
            raise ValueError("floor must be in (0, 1] and explore_share in [0, 1]")

    @property
    def neutral(self) -> float:
        """A newcomer's score."""
        return self.prior_good / (self.prior_good + self.prior_bad)


@dataclass(frozen=True, slots=True)
class Observation:
    """One event about one provider, at a time (seconds since the epoch)."""

    provider: str
    event: Event
    at: float
    task_id: str = ""
    latency: float | None = None  # seconds from the first request to the lease (LEASED only)


def decay(weight: float, age: float, half_life: float) -> float:
    """``weight`` after ``age`` seconds (a future event, age < 0, counts in full)."""
    return weight * math.pow(0.5, max(age, 0.0) / half_life)


@dataclass(slots=True)
class Tally:
    """One provider's decayed tallies as of ``at``, plus plain counts for display."""

    at: float = 0.0
    good: float = 0.0
    bad: float = 0.0
    counts: dict[Event, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    latency_n: int = 0
    last_at: float = 0.0

    def add(self, obs: Observation, half_life: float) -> None:
        """Fold one observation in (in any order: both sides are brought to the later time)."""
        if obs.at > self.at:
            self.good, self.bad = self.weights(obs.at, half_life)
            self.at = obs.at
        age = self.at - obs.at
        self.good += decay(GOOD.get(obs.event, 0.0), age, half_life)
        self.bad += decay(BAD.get(obs.event, 0.0), age, half_life)
        self.counts[obs.event] = self.counts.get(obs.event, 0) + 1
        if obs.latency is not None:
            self.latency_sum += obs.latency
            self.latency_n += 1
        self.last_at = max(self.last_at, obs.at)

    def weights(self, now: float, half_life: float) -> tuple[float, float]:
        """(good, bad) decayed to ``now``."""
        return decay(self.good, now - self.at, half_life), decay(self.bad, now - self.at, half_life)

    @property
    def latency(self) -> float | None:
        """Mean seconds from request to lease, if any lease was timed."""
        return self.latency_sum / self.latency_n if self.latency_n else None


@dataclass(frozen=True, slots=True)
class Standing:
    """What ranking needs of one provider now."""

    score: float
    newcomer: bool
    distrusted: bool

    def price_factor(self, settings: ReputationSettings) -> float:
        return 1.0 / max(self.score, settings.floor)


def standing(tally: Tally | None, now: float, settings: ReputationSettings) -> Standing:
    """Score a provider (``None``: never dealt with: the neutral newcomer)."""
    if tally is None:
        good = bad = 0.0
    else:
        good, bad = tally.weights(now, settings.half_life)
    score = (settings.prior_good + good) / (settings.prior_good + settings.prior_bad + good + bad)
    return Standing(score=score, newcomer=good + bad < settings.newcomer_evidence,
                    distrusted=score < settings.distrust_below)


def tally(observations: Iterable[Observation], settings: ReputationSettings) -> dict[str, Tally]:
    """Per provider, the tallies of ``observations``."""
    tallies: dict[str, Tally] = {}
    for obs in observations:
        tallies.setdefault(obs.provider, Tally()).add(obs, settings.half_life)
    return tallies


def exploring(draw: float, settings: ReputationSettings) -> bool:
    """Is a placement with uniform ``draw`` in [0, 1) exploratory (newcomers first)?"""
    return draw < settings.explore_share


@dataclass(frozen=True, slots=True)
class Trust:
    """How reputation enters ``market.rank_key``: a tier first (lower is better), then the
    factor the price is multiplied by. The default changes nothing."""

    tier: int = 1
    price_factor: float = 1.0


EXPLORED, TRUSTED, DISTRUSTED = 0, 1, 2  # the tiers
NO_REPUTATION = Trust()


def trust(standing: Standing, explore: bool, settings: ReputationSettings) -> Trust:
    """A distrusted provider is ranked last; in an exploratory placement a newcomer first."""
    if standing.distrusted:
        tier = DISTRUSTED
    elif explore and standing.newcomer:
        tier = EXPLORED
    else:
        tier = TRUSTED
    return Trust(tier=tier, price_factor=standing.price_factor(settings))
