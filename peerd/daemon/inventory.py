"""The provider's GPUs and GPU runtime, read again every minute while the node runs (Nomad re-fingerprints
devices as often): a GPU that fell off the bus leaves the ledger and the advert (once no lease holds it), one
that came back or was added joins, and a container toolkit installed since start-up is noticed. Any change
re-publishes the advert at once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from peerd.executor.gpus import CapacityLedger
from peerd.host.nvml import GpuInfo

log = logging.getLogger(__name__)

INVENTORY_INTERVAL = 60.0  # seconds between two reads


@dataclass
class InventoryWatch:
    ledger: CapacityLedger
    read_gpus: Callable[[], Awaitable[list[GpuInfo]]]  # NVML, off the event loop
    offered: Callable[[tuple[GpuInfo, ...]], tuple[GpuInfo, ...]]  # what the live config shares of them
    refresh_runtime: Callable[[], Awaitable[bool]]  # decide GPU support again; whether containers get GPUs
    changed: Callable[[], None]  # re-publish the advert
    interval: float = INVENTORY_INTERVAL

    async def once(self, runtime_before: bool) -> bool:
        """One read; whether containers can get GPUs now. Tells ``changed`` when GPUs or support changed."""
        gpus = self.offered(tuple(await self.read_gpus()))
        runtime = await self.refresh_runtime()
        moved = self.ledger.update_gpus(gpus)
        if moved or runtime != runtime_before:
            log.info("inventory changed: %d GPU(s) offered, GPU runtime %s",
                     len(self.ledger.free(holds=False).gpus), "yes" if runtime else "no")
            self.changed()
        return runtime

    async def run(self, runtime: bool, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            runtime = await self.once(runtime)
