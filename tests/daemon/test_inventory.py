"""The provider's GPUs read again while it runs: changes reach the ledger and the advert, and only changes."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from peerd.daemon.inventory import InventoryWatch
from peerd.executor.gpus import CapacityLedger
from peerd.host.nvml import FakeNvml, GpuInfo

GiB = 1 << 30


async def test_a_lost_gpu_and_a_toolkit_installed_later_reach_the_advert(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gpus = FakeNvml.identical(2).read()
    now = list(gpus)
    runtime = [False]
    published: list[tuple[int, bool]] = []
    ledger = CapacityLedger(cpus=4, memory=8 * GiB, gpus=gpus)

    async def read() -> list[GpuInfo]:
        return list(now)

    async def refresh() -> bool:
        return runtime[0]

    watch = InventoryWatch(ledger, read, lambda found: found, refresh,
                           lambda: published.append((len(ledger.gpus), runtime[0])), interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run, False)
        await trio.sleep(61)
        assert published == []  # nothing changed, nothing re-published
        now.pop()
        await trio.sleep(60)
        assert published == [(1, False)]
        runtime[0] = True  # nvidia-ctk runtime configure, docker restarted
        await trio.sleep(60)
        assert published == [(1, False), (1, True)]
        now.append(replace(gpus[1], memory_free=0))
        await trio.sleep(60)
        assert published[-1] == (2, True)
        nursery.cancel_scope.cancel()
