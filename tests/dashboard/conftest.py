"""Dashboard tests get a real ``DashboardServer`` on a loopback port over the control tests' ``StubOps``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

from peerd.control.ops import CapacityView, StatusView
from peerd.dashboard import DashboardServer

from ..control.stub import StubOps


class DashboardOps(StubOps):
    """The stub, with what a provider's status also carries: capacity and uptime."""

    async def status(self) -> StatusView:
        view = await super().status()
        view["uptime"] = 3725.0
        view["capacity"] = CapacityView(
            cpus=8.0, cpus_free=6.0, memory=16 << 30, memory_free=12 << 30,
            gpus=[{"uuid": "GPU-aaaa", "model": "H100", "memory": 80 << 30, "task_id": "t0001"},
                  {"uuid": "GPU-bbbb", "model": "H100", "memory": 80 << 30, "task_id": ""}])
        return view


@dataclass
class Served:
    ops: DashboardOps
    server: DashboardServer
    port: int
    scope: trio.CancelScope  # cancel it to stop the server


async def serve(nursery: trio.Nursery, ops: DashboardOps, port: int = 0, interval: float = 0.05) -> Served:
    server = DashboardServer(ops, ("127.0.0.1", port), interval=interval, heartbeat=0.5)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await server.run(task_status=task_status)

    bound = await nursery.start(run)
    return Served(ops, server, bound, scope)


@pytest.fixture
async def served(nursery: trio.Nursery) -> Served:
    return await serve(nursery, DashboardOps())
