"""What a provider node's advert says about its own load."""

from __future__ import annotations

import time
from pathlib import Path

from peerd.host.identity import init_home
from tests.daemon.unstarted import unstarted_lifecycle


async def test_the_advert_queue_depth_counts_the_requesters_turned_away_for_capacity(tmp_path: Path) -> None:
    init_home(tmp_path)
    async with unstarted_lifecycle(tmp_path, provider=True) as lifecycle:
        ours, config = lifecycle.services.provider, lifecycle.state.config
        assert ours is not None
        now = time.time()

        def depth() -> int:
            return ours.advert(config, lifecycle.services.peer_id, [], now, draining=False).queue_depth

        assert depth() == 0
        ours.provider.fair.refused("requester-1", now)
        ours.provider.fair.refused("requester-2", now)
        assert depth() == 2
        ours.provider.fair.served("requester-1")
        assert depth() == 1
