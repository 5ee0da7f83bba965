"""What to do with this node's containers after a restart. Pure: decisions only.

Rules (the executor applies the plan; nothing here talks to dockerd):
  * only containers labelled with this node's id are ever considered;
  * a container whose task this process already supervises is left alone;
  * tracked task, container running (or paused/restarting) -> re-attach;
  * tracked task, container exited/dead/created -> collect its outcome, remove it;
  * untracked task -> stop and remove (nobody will ever wait for it);
  * tracked task without a container -> lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from peerd.executor.contract import ContainerInfo

LIVE_STATES = frozenset({"running", "paused", "restarting"})


@dataclass(frozen=True)
class RecoveryPlan:
    reattach: tuple[ContainerInfo, ...]
    collect: tuple[ContainerInfo, ...]
    remove: tuple[ContainerInfo, ...]
    missing: tuple[str, ...]  # tracked task ids with no container


def plan_recovery(
    owned: Iterable[ContainerInfo], *, node_id: str, tracked: set[str], active: set[str]
) -> RecoveryPlan:
    reattach: list[ContainerInfo] = []
    collect: list[ContainerInfo] = []
    remove: list[ContainerInfo] = []
    seen: set[str] = set()
    for info in sorted(owned, key=lambda i: (i.task_id, i.container_id)):
        if info.node_id != node_id or info.task_id in active:
            continue
        if info.task_id not in tracked or info.task_id in seen:
            remove.append(info)
            continue
        seen.add(info.task_id)
        (reattach if info.state in LIVE_STATES else collect).append(info)
    missing = tuple(sorted(tracked - seen - active))
    return RecoveryPlan(tuple(reattach), tuple(collect), tuple(remove), missing)
