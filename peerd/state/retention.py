"""Retention: the service that prunes finished tasks' logs and task directories.

Every ``[retention] interval`` (and once at start) the pruner weighs what
finished tasks hold: each result's stdout/stderr in the state database and
each task directory under ``<home>/tasks`` (output archives). Oldest first,
it prunes whatever is older than ``max_age``, then more while the total is
over ``max_size``; then it returns the freed database pages to the file
system. Nothing of a task that is still running (or not yet final in the
store) is touched, and neither is anything the requester may still fetch
(see ``peerd.state.store_retention``). Receipts, leases, attempts, task rows and
each result's state, exit code, digests and times are kept forever: they are
the record of account, and small. A pruned result reads back with empty logs
and ``pruned_at`` set.

Blocking SQLite work runs in the store's worker thread; directory scans and
deletes in ``trio.to_thread``.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from peerd.config import RetentionConfig
from peerd.executor.outputs import discard_task_dir
from peerd.state.store import Store, StoreError

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0  # seconds; a smaller [retention] interval is raised to this


class Kind(enum.StrEnum):
    """What a holding is."""

    LOGS = "logs"  # a result's stdout + stderr in the state database
    DIR = "dir"  # a task directory under the work dir


@dataclass(frozen=True, slots=True)
class Holding:
    """Bytes one task keeps in one place, since when, and whether they may go."""

    task_id: str
    kind: Kind
    at: float  # when the task finished (a directory without a task: its mtime)
    size: int
    prunable: bool


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one pass of the pruner did."""

    pruned_logs: int  # results whose logs were emptied
    removed_dirs: int  # task directories deleted
    freed: int  # bytes of logs and directories let go
    kept: int  # bytes of logs and directories still held
    reclaimed_pages: int  # pages the database file shrank by


def choose(holdings: Iterable[Holding], *, now: float, max_age: float, max_size: int) -> list[Holding]:
    """What to prune: oldest prunable first, while too old or while the total is over ``max_size``.

    ``max_age`` or ``max_size`` of 0 means no limit of that kind. Holdings that
    may not be pruned still count toward the total.
    """
    every = list(holdings)
    total = sum(h.size for h in every)
    cutoff = now - max_age
    chosen: list[Holding] = []
    for holding in sorted((h for h in every if h.prunable), key=lambda h: (h.at, h.task_id, h.kind)):
        too_old = max_age > 0 and holding.at < cutoff
        too_big = max_size > 0 and total > max_size
        if not (too_old or too_big):
            break
        chosen.append(holding)
        total -= holding.size
    return chosen


# ---------------------------------------------------------------- task directories (blocking)
def _tree_size(path: Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue  # removed meanwhile
    return total


def scan_task_dirs(work_dir: Path) -> dict[str, tuple[float, int]]:
    """Blocking: ``{task id: (mtime, bytes)}`` for each directory (not link) in ``work_dir``."""
    found: dict[str, tuple[float, int]] = {}
    try:
        entries = list(os.scandir(work_dir))
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                found[entry.name] = (entry.stat(follow_symlinks=False).st_mtime, _tree_size(Path(entry.path)))
        except OSError:
            continue  # removed meanwhile
    return found


def remove_task_dirs(work_dir: Path, names: Collection[str]) -> int:
    """Blocking: delete these task directories; how many are gone."""
    for name in names:
        discard_task_dir(work_dir / name)
    return sum(not (work_dir / name).exists() for name in names)


# ---------------------------------------------------------------- the service
class Pruner:
    """Applies ``[retention]`` to one node's store and work dir."""

    def __init__(
        self,
        store: Store,
        settings: RetentionConfig,
        *,
        work_dir: Path | None,
        active: Callable[[], Collection[str]] = frozenset,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.work_dir = work_dir
        self.active = active  # ids of tasks running here now: never pruned
        self.clock = clock
        self.sweeps = 0
        self.last: Sweep | None = None
        self._swept = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep now, then every ``interval``, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.sweep()
            except (StoreError, OSError) as exc:
                log.warning("retention: sweep failed, will retry: %s", exc)
            await trio.sleep(max(self.settings.interval, MIN_INTERVAL))

    async def wait_sweeps(self, count: int) -> None:
        """Until at least ``count`` sweeps have finished (for tests and diagnostics)."""
        while self.sweeps < count:
            await self._swept.wait()

    async def sweep(self) -> Sweep:
        """One pass: weigh, choose, prune logs, remove directories, reclaim."""
        dirs = await trio.to_thread.run_sync(scan_task_dirs, self.work_dir) if self.work_dir else {}
        now = self.clock()
        ages = await self.store.task_ages(dirs.keys())
        logs = await self.store.log_holdings(now)
        active = set(self.active())  # after the store reads: a task launched meanwhile is in here
        holdings = [Holding(h.task_id, Kind.LOGS, h.finished_at, h.size, h.prunable and h.task_id not in active)
                    for h in logs]
        for name, (mtime, size) in dirs.items():
            age = ages.get(name)
            at, final = (mtime, True) if age is None else (age.updated_at, age.final)
            holdings.append(Holding(name, Kind.DIR, at, size, final and name not in active))
        chosen = choose(holdings, now=now, max_age=self.settings.max_age, max_size=self.settings.max_size)
        doomed_logs = [h.task_id for h in chosen if h.kind is Kind.LOGS]
        doomed_dirs = [h.task_id for h in chosen if h.kind is Kind.DIR]
        pruned = await self.store.prune_logs(doomed_logs, now)
        removed = 0
        if doomed_dirs and self.work_dir is not None:
            removed = await trio.to_thread.run_sync(remove_task_dirs, self.work_dir, doomed_dirs)
        reclaimed = await self.store.reclaim()
        freed = sum(h.size for h in chosen)
        result = Sweep(pruned, removed, freed, sum(h.size for h in holdings) - freed, reclaimed)
        if pruned or removed:
            log.info("retention: pruned the logs of %d task(s), removed %d task dir(s), freed %d bytes; "
                     "%d bytes kept", pruned, removed, freed, result.kept)
        self._record(result)
        return result

    def _record(self, result: Sweep) -> None:
        self.last = result
        self.sweeps += 1
        self._swept.set()
        self._swept = trio.Event()
