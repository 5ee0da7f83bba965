"""Reputation scoring: decay, the newcomer prior, the tiers, and what ranking makes of them."""

from __future__ import annotations

import dataclasses
import random

import pytest

from peerd.market import rules as market
from peerd.market.reputation import (
    DISTRUSTED,
    EXPLORED,
    TRUSTED,
    Event,
    Observation,
    ReputationSettings,
    decay,
    exploring,
    standing,
    tally,
    trust,
)
from protocol.messages import Advert, JobSpec, NodeRole

S = ReputationSettings(half_life=100.0)
NOW = 10_000.0


def obs(provider: str, event: Event, at: float = NOW) -> Observation:
    return Observation(provider, event, at)


def score(*events: Event, at: float = NOW, now: float = NOW) -> float:
    tallies = tally([obs("p", e, at) for e in events], S)
    return standing(tallies.get("p"), now, S).score


def test_a_newcomer_is_neutral_and_a_newcomer() -> None:
    fresh = standing(None, NOW, S)
    assert fresh.score == pytest.approx(S.neutral) == pytest.approx(0.5)
    assert fresh.newcomer and not fresh.distrusted


def test_completions_raise_the_score_and_losses_and_disputes_sink_it() -> None:
    assert score(Event.COMPLETED) > S.neutral
    assert score(*[Event.COMPLETED] * 20) == pytest.approx(21 / 22)
    assert score(Event.LOST) == pytest.approx(0.25)
    assert score(Event.COMPLETED, Event.DISPUTED) == pytest.approx(2 / 7)
    assert score(Event.CANCELLED, Event.LEASED) == pytest.approx(S.neutral)  # neither good nor bad


def test_one_loss_distrusts_a_newcomer_but_not_an_established_provider() -> None:
    assert standing(tally([obs("p", Event.LOST)], S)["p"], NOW, S).distrusted
    veteran = tally([obs("p", Event.COMPLETED)] * 20 + [obs("p", Event.LOST)], S)["p"]
    assert not standing(veteran, NOW, S).distrusted


def test_weights_halve_every_half_life_so_an_old_loss_is_forgiven() -> None:
    assert decay(4.0, 100.0, 100.0) == pytest.approx(2.0)
    assert decay(4.0, -5.0, 100.0) == 4.0  # a clock step back never inflates a weight
    old_loss = score(Event.LOST, at=NOW - 1000.0)  # ten half-lives ago
    assert old_loss == pytest.approx(S.neutral, abs=0.01)
    assert standing(tally([obs("p", Event.LOST, NOW - 1000.0)], S)["p"], NOW, S).newcomer


def test_the_order_observations_arrive_in_does_not_matter() -> None:
    events = [obs("p", e, NOW - i * 37.0) for i, e in enumerate([Event.COMPLETED, Event.LOST, Event.VERIFIED] * 5)]
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    a, b = tally(events, S)["p"], tally(shuffled, S)["p"]
    assert a.weights(NOW, S.half_life) == pytest.approx(b.weights(NOW, S.half_life))
    assert a.counts == b.counts == {Event.COMPLETED: 5, Event.LOST: 5, Event.VERIFIED: 5}


def test_tiers_distrusted_last_and_newcomers_first_only_when_exploring() -> None:
    liar = standing(tally([obs("p", Event.COMPLETED), obs("p", Event.DISPUTED)], S)["p"], NOW, S)
    fresh = standing(None, NOW, S)
    assert trust(liar, True, S).tier == DISTRUSTED
    assert trust(fresh, True, S).tier == EXPLORED
    assert trust(fresh, False, S).tier == TRUSTED
    assert trust(fresh, False, S).price_factor == pytest.approx(2.0)


def test_explore_share_is_the_fraction_of_draws_that_explore() -> None:
    draws = [i / 1000 for i in range(1000)]
    assert sum(exploring(d, S) for d in draws) == 100


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        ReputationSettings(half_life=0)
    with pytest.raises(ValueError):
        ReputationSettings(floor=0)


# ---------------------------------------------------------------- in the ranking
def advert(peer_id: str, price: float = 0.01) -> Advert:
    return Advert(
        peer_id=peer_id, seq=1, issued_at=1000.0, expires_at=1300.0, role=NodeRole.PROVIDER,
        addrs=(), version="0.1.0", cpus=8.0, memory=1 << 34, disk=1 << 36, gpus=(),
        free_cpus=8.0, free_memory=1 << 34, free_gpus=(), queue_depth=0, running=0,
        price_cpu_hour=price, price_gpu_hour=0.0, docker=True, gpu_runtime=False, network=False,
        max_timeout=3600.0, draining=False,
    )


SPEC = JobSpec(image="busybox", command=("true",))


def ranked(observations: list[Observation], adverts: list[Advert], draw: float) -> list[str]:
    tallies = tally(observations, S)
    explore = exploring(draw, S)
    terms = {a.peer_id: trust(standing(tallies.get(a.peer_id), NOW, S), explore, S) for a in adverts}
    return [a.peer_id for a in market.rank(SPEC, adverts, terms.__getitem__)]


def test_a_liar_ranks_after_honest_providers_even_when_free() -> None:
    history = [obs("liar", Event.COMPLETED), obs("liar", Event.DISPUTED)]
    history += [obs(p, e) for p in ("h1", "h2") for e in (Event.COMPLETED, Event.VERIFIED)]
    adverts = [advert("liar", price=0.0), advert("h1", 0.02), advert("h2", 0.03)]
    assert ranked(history, adverts, draw=0.99) == ["h1", "h2", "liar"]
    assert ranked(history, adverts, draw=0.0) == ["h1", "h2", "liar"]  # exploring does not rescue it


def test_a_good_record_beats_a_slightly_cheaper_unknown_but_not_a_much_cheaper_one() -> None:
    history = [obs("known", Event.COMPLETED)] * 10
    assert ranked(history, [advert("known", 0.010), advert("new", 0.009)], draw=0.99) == ["known", "new"]
    assert ranked(history, [advert("known", 0.010), advert("new", 0.004)], draw=0.99) == ["new", "known"]


def test_a_newcomer_gets_about_the_explore_share_of_placements() -> None:
    history = [obs("known", Event.COMPLETED)] * 10
    adverts = [advert("known"), advert("new")]
    rng = random.Random(1)
    firsts = [ranked(history, adverts, rng.random())[0] for _ in range(1000)]
    assert 60 <= firsts.count("new") <= 140  # 10 % expected


def test_without_reputation_the_ranking_is_by_price() -> None:
    adverts = [advert("b", 0.02), advert("a", 0.03)]
    assert [a.peer_id for a in market.rank(SPEC, adverts)] == ["b", "a"]
    assert dataclasses.replace(S).neutral == 0.5
