"""The drain's budget: its steps add up, and a stuck step holds the drain only as long as its bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from peerd.config import Config, load
from peerd.daemon.drainplan import ADVERT_FLUSH, EXIT_MARGIN, STOP_MARGIN, drain_budget, stop_timeout
from peerd.host.identity import init_home
from tests.daemon.unstarted import unstarted_lifecycle


def test_the_budget_is_every_step_bound_added_up() -> None:
    config = Config()
    budget = drain_budget(config)
    limits, net = config.limits, config.network
    assert budget.total == (limits.drain_grace + limits.stop_grace + STOP_MARGIN
                            + net.io_timeout + STOP_MARGIN + ADVERT_FLUSH)
    assert stop_timeout(config) >= budget.total + EXIT_MARGIN


async def test_a_stream_that_never_ends_holds_the_drain_for_its_step_only(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    init_home(tmp_path)
    (tmp_path / "config.toml").write_text('[network]\nio_timeout = "7s"\n')
    async with unstarted_lifecycle(tmp_path, provider=True) as lifecycle:
        started = trio.current_time()
        with lifecycle.state.task_streams.hold():  # a requester that never takes its receipt
            await lifecycle.drain_and_stop()
        took = trio.current_time() - started
        assert lifecycle.state.draining and lifecycle.services.provider is not None
        assert lifecycle.services.provider.provider.draining
    config = load(tmp_path)
    assert took == pytest.approx(drain_budget(config).deliver) and took == 7 + STOP_MARGIN
    assert took <= drain_budget(config).total
