"""Per-peer bounds on offers: how many one peer may have open, and how many it let lapse. Pure.

An offer is a quote and holds no capacity, but answering costs the provider a
stream and some work, and an accepted offer holds capacity until the lease is
countersigned. So each requester peer may have at most ``offers_per_peer``
negotiations open at once, and every offer it lets lapse (never answered,
accepted too late, stream dropped, lease never countersigned) adds one to its
*lapse score*. The score decays by half every ``half_life`` seconds; a peer
is refused (``busy``) while its score is above ``lapse_limit - 1``: after
``lapse_limit`` lapses in quick succession, until one lapse has decayed away.
Declining an offer with Cancel is honest and costs nothing.

No clock inside: every call takes ``now``. Memory is bounded: at most
``max_peers`` scores are kept (the lowest go first when full).
"""

from __future__ import annotations

from dataclasses import dataclass

_FORGET_BELOW = 0.05  # a score this small is dropped


@dataclass(frozen=True)
class GuardLimits:
    # The defaults of [policy] offers_per_peer and lapsed_offers: peerd/config.py takes them from here.
    offers_per_peer: int = 16
    lapse_limit: int = 3
    half_life: float = 600.0  # seconds
    max_peers: int = 4096


@dataclass
class _Score:
    value: float
    at: float

    def now(self, now: float, half_life: float) -> float:
        return self.value * 0.5 ** (max(now - self.at, 0.0) / half_life)


class OfferGuard:
    def __init__(self, limits: GuardLimits = GuardLimits()) -> None:
        self.limits = limits
        self._open: dict[str, int] = {}  # peer -> negotiations open
        self._scores: dict[str, _Score] = {}  # peer -> lapse score

    def refusal(self, peer: str, now: float) -> str | None:
        """Why ``peer`` may not open another negotiation now, or None."""
        open_now = self._open.get(peer, 0)
        if open_now >= self.limits.offers_per_peer:
            return f"{open_now} offers to this peer are open, the limit per peer"
        score = self.lapses(peer, now)
        if score > self.limits.lapse_limit - 1:
            return f"this peer let {score:.1f} recent offers lapse unaccepted (limit {self.limits.lapse_limit:g})"
        return None

    def lapses(self, peer: str, now: float) -> float:
        """The peer's decayed count of lapsed offers."""
        score = self._scores.get(peer)
        return 0.0 if score is None else score.now(now, self.limits.half_life)

    def open_count(self, peer: str) -> int:
        return self._open.get(peer, 0)

    def opened(self, peer: str) -> None:
        self._open[peer] = self._open.get(peer, 0) + 1

    def closed(self, peer: str, *, lapsed: bool, now: float) -> None:
        """One negotiation of ``peer`` ended; ``lapsed``: its offer was neither taken nor declined."""
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)
        if lapsed:
            self._add_lapse(peer, now)

    def _add_lapse(self, peer: str, now: float) -> None:
        value = self.lapses(peer, now) + 1.0
        if peer not in self._scores and len(self._scores) >= self.limits.max_peers:
            self._make_room(now)
        self._scores[peer] = _Score(value, now)

    def _make_room(self, now: float) -> None:
        half_life = self.limits.half_life
        for peer in [p for p, s in self._scores.items() if s.now(now, half_life) < _FORGET_BELOW]:
            del self._scores[peer]
        if len(self._scores) >= self.limits.max_peers:
            lowest = min(self._scores, key=lambda p: self._scores[p].now(now, half_life))
            del self._scores[lowest]

    def tracked(self) -> int:
        """How many peers have a lapse score (for tests and metrics)."""
        return len(self._scores)


__all__ = ["GuardLimits", "OfferGuard"]
