"""A gang member's network: a holder container and the WireGuard interface moved into it.

``open`` starts the holder (``plan.plan_holder``: network none, every isolation default), moves a
fresh overlay interface into its namespace (``peerd.overlay``), and returns the holder's name for
the job's ``NetworkMode container:<holder>``: the job's process starts with lo and the overlay and
nothing else. ``close`` removes both (idempotent, by deterministic names, so it works for a task
re-attached after a restart too); ``recover`` removes every holder and tunnel of this node whose
task no longer runs. ``OverlayError`` is translated here, once, into ``ExecutorError``.
"""

from __future__ import annotations

import logging

import trio

from peerd.executor.contract import RunSpec
from peerd.executor.engine import Engine
from peerd.executor.errors import EngineError, ExecutorError, PolicyError, Reason
from peerd.executor.plan import LABEL_HOLDER, Limits, holder_name, plan_holder
from peerd.overlay.commands import node_prefix, tunnel_name
from peerd.overlay.errors import OverlayError
from peerd.overlay.host import Availability, probe
from peerd.overlay.wireguard import Tunnel, WireGuard, leftovers

log = logging.getLogger(__name__)


class GangNetworks:
    """The overlays of one node's gang members."""

    def __init__(self, node_id: str, limits: Limits) -> None:
        self.node_id = node_id
        self.limits = limits
        self._availability: Availability | None = None
        self._tunnels: dict[str, Tunnel] = {}

    @property
    def availability(self) -> Availability:
        """Detected once, at the first question."""
        if self._availability is None:
            self._availability = probe()
        return self._availability

    def require(self) -> WireGuard:
        """The adapter; PolicyError (overlay_unavailable) on a host that cannot make overlays."""
        found = self.availability
        if found.backend is None:
            raise PolicyError(Reason.OVERLAY_UNAVAILABLE, f"this host cannot join gang jobs: {found.detail}")
        return WireGuard(found.backend)

    async def open(self, engine: Engine, spec: RunSpec) -> str:
        """The name of the holder whose namespace now has the overlay interface."""
        assert spec.overlay is not None
        wireguard = self.require()
        try:
            _, pid = await engine.start_holder(plan_holder(spec, node_id=self.node_id, limits=self.limits))
            name = tunnel_name(self.node_id, spec.task_id)
            self._tunnels[spec.task_id] = await wireguard.open(name, spec.overlay, pid)
        except OverlayError as exc:
            with trio.CancelScope(shield=True):
                await self.close(engine, spec.task_id)
            raise ExecutorError(Reason.OVERLAY_FAILED, str(exc)) from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close(engine, spec.task_id)
            raise
        return holder_name(self.node_id, spec.task_id)

    async def close(self, engine: Engine, task_id: str) -> None:
        """Remove the task's holder and tunnel, whichever exist; failures are logged (recover retries)."""
        try:
            await engine.remove(holder_name(self.node_id, task_id))
        except EngineError as exc:
            log.warning("network holder of task %s not removed: %s", task_id, exc)
        tunnel = self._tunnels.pop(task_id, None)
        found = self.availability
        if found.backend is None:
            return
        wireguard = WireGuard(found.backend)
        try:
            if tunnel is not None:
                await wireguard.close(tunnel)
            else:
                await wireguard.remove(tunnel_name(self.node_id, task_id))
        except OverlayError as exc:
            log.warning("overlay of task %s not removed: %s", task_id, exc)

    async def recover(self, engine: Engine, live: set[str]) -> list[str]:
        """Remove this node's holders and tunnels of tasks not in ``live``; what was removed."""
        removed = []
        for container_id, task_id in await engine.list_labelled(LABEL_HOLDER, self.node_id):
            if task_id not in live:
                await engine.remove(container_id)
                removed.append(f"holder of {task_id}")
        return removed + await self.remove_tunnels(live)

    async def remove_tunnels(self, live: set[str]) -> list[str]:
        """Remove this node's tunnels of tasks not in ``live`` (found on the host by name)."""
        removed: list[str] = []
        found = self.availability
        if found.backend is None:
            return removed
        keep = {tunnel_name(self.node_id, t) for t in live}
        wireguard = WireGuard(found.backend)
        for name in sorted(await trio.to_thread.run_sync(leftovers, node_prefix(self.node_id)) - keep):
            try:
                await wireguard.remove(name)
                removed.append(name)
            except OverlayError as exc:
                log.warning("leftover overlay %s not removed: %s", name, exc)
        return removed
