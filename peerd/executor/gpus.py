"""The capacity ledger: who holds which GPUs, CPUs and memory. Pure: no I/O, no clock.

Rules:
  * a GPU matches a request by ``protocol.gpumatch`` (the market's rule too);
  * a GPU (by NVML UUID) belongs to at most one reservation at a time;
  * ``quote`` checks what a request would get (GPU UUIDs included) and takes
    nothing: an offer is a quote, so an offer nobody accepts holds nothing;
  * a reservation is first a *hold* (it lapses at ``hold_until`` unless
    confirmed) and, once confirmed, lasts until released; ``reserve`` may be
    told the exact GPUs to take (those a quote named);
  * ``release`` is idempotent, so every exit path may call it;
  * after a daemon restart the ledger is rebuilt from the live tasks only
    (``CapacityLedger.rebuild``): holds die with the process, confirmed
    allocations come back from the containers' labels;
  * free = total - sum(reservations), for CPUs, memory and each GPU;
  * the GPUs may be read again (``update_gpus``): a GPU that vanished leaves the ledger once no reservation
    holds it, and is never chosen meanwhile;
    ``free(holds=False)`` counts confirmed reservations only (what adverts show).

The caller passes ``now`` (any monotonic or wall clock, used consistently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from peerd.executor.errors import CapacityError, Reason
from peerd.host.nvml import GpuInfo
from protocol.gpumatch import gpu_matches


@dataclass(frozen=True)
class Reservation:
    task_id: str
    cpus: float
    memory: int
    gpus: tuple[str, ...]  # UUIDs, in device-index order
    hold_until: float | None  # None once confirmed

    @property
    def confirmed(self) -> bool:
        return self.hold_until is None


@dataclass(frozen=True)
class FreeCapacity:
    cpus: float
    memory: int
    gpus: tuple[GpuInfo, ...]  # the free GPUs, in device-index order


class Allocated(Protocol):
    """What a live task holds (``ContainerInfo`` fits)."""

    @property
    def task_id(self) -> str: ...

    @property
    def cpus(self) -> float: ...

    @property
    def memory(self) -> int: ...

    @property
    def gpus(self) -> tuple[str, ...]: ...


_EPS = 1e-9


def _matching(gpus: Iterable[GpuInfo], model: str | None, min_memory: int, min_capability: str) -> list[GpuInfo]:
    return [g for g in gpus if gpu_matches(model, min_memory, name=g.name, memory=g.memory_total,
                                           min_capability=min_capability, capability=g.compute_capability)]


class CapacityLedger:
    def __init__(self, *, cpus: float, memory: int, gpus: Iterable[GpuInfo] = ()) -> None:
        self.total_cpus = float(cpus)
        self.total_memory = int(memory)
        self._gpus: dict[str, GpuInfo] = {g.uuid: g for g in sorted(gpus, key=lambda g: g.index)}
        self._owner: dict[str, str] = {}  # gpu uuid -> task id
        self._reservations: dict[str, Reservation] = {}
        self._lost: set[str] = set()  # GPUs NVML no longer lists, kept until their holder releases them

    @classmethod
    def rebuild(
        cls, *, cpus: float, memory: int, gpus: Iterable[GpuInfo], live: Iterable[Allocated]
    ) -> CapacityLedger:
        """A ledger after a restart: every live task's allocation, confirmed."""
        ledger = cls(cpus=cpus, memory=memory, gpus=gpus)
        for task in live:
            ledger.adopt(task.task_id, cpus=task.cpus, memory=task.memory, gpus=task.gpus)
        return ledger

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(self._gpus.values())

    def reservation(self, task_id: str) -> Reservation | None:
        return self._reservations.get(task_id)

    def reservations(self) -> tuple[Reservation, ...]:
        return tuple(self._reservations.values())

    def free(self, *, holds: bool = True) -> FreeCapacity:
        """What is not reserved; with ``holds=False``, unconfirmed holds count as free."""
        counted = [r for r in self._reservations.values() if holds or r.confirmed]
        taken = {uuid for r in counted for uuid in r.gpus}
        return FreeCapacity(
            cpus=self.total_cpus - sum(r.cpus for r in counted),
            memory=self.total_memory - sum(r.memory for r in counted),
            gpus=tuple(g for uuid, g in self._gpus.items() if uuid not in taken and uuid not in self._lost),
        )

    def quote(
        self,
        *,
        cpus: float,
        memory: int,
        gpu_count: int = 0,
        gpu_model: str | None = None,
        min_gpu_memory: int = 0,
        min_capability: str = "",
        now: float,
        avoid: frozenset[str] = frozenset(),
    ) -> tuple[str, ...]:
        """The GPUs a reservation would get now (free ones not in ``avoid`` first); takes nothing.
        Raises CapacityError as ``reserve`` would."""
        self.expire(now)
        free = self._check_room(cpus, memory, gpu_count)
        return self._choose_gpus(gpu_count, gpu_model, min_gpu_memory, min_capability, free.gpus, avoid)

    def reserve(
        self,
        task_id: str,
        *,
        cpus: float,
        memory: int,
        gpu_count: int = 0,
        gpu_model: str | None = None,
        min_gpu_memory: int = 0,
        min_capability: str = "",
        now: float,
        hold_until: float,
        gpus: tuple[str, ...] | None = None,
    ) -> Reservation:
        """Hold capacity for ``task_id`` until ``hold_until`` (lapsed holds are expired first).
        With ``gpus``, exactly those GPUs (e.g. a quote's) or CapacityError(NO_CAPACITY)."""
        self.expire(now)
        if task_id in self._reservations:
            raise CapacityError(Reason.DUPLICATE_TASK, f"task {task_id!r} already holds capacity")
        free = self._check_room(cpus, memory, gpu_count)
        if gpus is None:
            chosen = self._choose_gpus(gpu_count, gpu_model, min_gpu_memory, min_capability, free.gpus)
        else:
            chosen = self._exact_gpus(gpus, gpu_count, gpu_model, min_gpu_memory, min_capability, free.gpus)
        return self._record(Reservation(task_id, float(cpus), int(memory), chosen, hold_until))

    def _check_room(self, cpus: float, memory: int, gpu_count: int) -> FreeCapacity:
        if cpus < 0 or memory < 0 or gpu_count < 0:
            raise CapacityError(Reason.NO_CAPACITY, "negative resources requested")
        free = self.free()
        if cpus > free.cpus + _EPS or memory > free.memory:
            raise CapacityError(
                Reason.NO_CAPACITY,
                f"asked {cpus} cpus / {memory} B, free {free.cpus:g} cpus / {free.memory} B",
            )
        return free

    def _exact_gpus(
        self, gpus: tuple[str, ...], count: int, model: str | None, min_memory: int, min_capability: str,
        free: tuple[GpuInfo, ...],
    ) -> tuple[str, ...]:
        if len(gpus) != count or len(set(gpus)) != count:
            raise CapacityError(Reason.NO_CAPACITY, f"{count} distinct GPU(s) asked, {gpus!r} named")
        free_ids = {g.uuid for g in _matching(free, model, min_memory, min_capability)}
        gone = [uuid for uuid in gpus if uuid not in free_ids]
        if gone:
            raise CapacityError(Reason.NO_CAPACITY, f"GPU(s) {', '.join(gone)} no longer free")
        return tuple(gpus)

    def _choose_gpus(
        self,
        count: int,
        model: str | None,
        min_memory: int,
        min_capability: str,
        free: tuple[GpuInfo, ...],
        avoid: frozenset[str] = frozenset(),
    ) -> tuple[str, ...]:
        if count == 0:
            return ()
        fitting = _matching((g for u, g in self._gpus.items() if u not in self._lost), model, min_memory,
                            min_capability)
        if len(fitting) < count:
            raise CapacityError(
                Reason.NO_MATCHING_GPU,
                f"{len(fitting)} GPU(s) here match model={model!r} memory>={min_memory}, {count} asked",
            )
        matching = [g.uuid for g in _matching(free, model, min_memory, min_capability)]
        available = sorted(matching, key=lambda uuid: uuid in avoid)  # stable: index order within each
        if len(available) < count:
            raise CapacityError(
                Reason.NO_CAPACITY, f"{len(available)} matching GPU(s) free, {count} asked"
            )
        return tuple(sorted(available[:count], key=lambda uuid: self._gpus[uuid].index))

    def update_gpus(self, gpus: Iterable[GpuInfo]) -> bool:
        """The host's GPUs as read again: new ones join, vanished ones leave, but never while reserved (they
        leave when released, and are never chosen again meanwhile). True when the offered set changed."""
        now = {g.uuid: g for g in gpus}
        before = set(self._gpus) - self._lost
        for uuid in list(self._gpus):
            if uuid in now:
                continue
            if uuid in self._owner:
                self._lost.add(uuid)
            else:
                del self._gpus[uuid]
        for uuid, gpu in now.items():
            self._lost.discard(uuid)
            self._gpus[uuid] = gpu
        self._gpus = dict(sorted(self._gpus.items(), key=lambda item: item[1].index))
        return set(self._gpus) - self._lost != before

    def adopt(self, task_id: str, *, cpus: float, memory: int, gpus: tuple[str, ...]) -> Reservation:
        """Record a confirmed allocation of exactly these GPUs (restart path). CPUs and memory
        are taken even past the total: the containers exist whatever the ledger thinks."""
        if task_id in self._reservations:
            raise CapacityError(Reason.DUPLICATE_TASK, f"task {task_id!r} already holds capacity")
        for uuid in gpus:
            if uuid in self._owner:
                raise CapacityError(
                    Reason.GPU_CONFLICT, f"GPU {uuid} claimed by {self._owner[uuid]!r} and {task_id!r}"
                )
        known = tuple(u for u in gpus if u in self._gpus)  # a GPU that vanished holds nothing
        return self._record(Reservation(task_id, float(cpus), int(memory), known, None))

    def _record(self, reservation: Reservation) -> Reservation:
        self._reservations[reservation.task_id] = reservation
        for uuid in reservation.gpus:
            self._owner[uuid] = reservation.task_id
        return reservation

    def confirm(self, task_id: str, *, now: float | None = None) -> Reservation:
        """Turn a hold into an allocation; with ``now``, a lapsed hold is refused."""
        held = self._reservations.get(task_id)
        if held is None:
            raise CapacityError(Reason.UNKNOWN_RESERVATION, f"no reservation for {task_id!r}")
        if held.hold_until is not None and now is not None and now >= held.hold_until:
            self.release(task_id)
            raise CapacityError(Reason.RESERVATION_EXPIRED, f"hold for {task_id!r} lapsed")
        confirmed = Reservation(held.task_id, held.cpus, held.memory, held.gpus, None)
        self._reservations[task_id] = confirmed
        return confirmed

    def release(self, task_id: str) -> Reservation | None:
        """Give back everything ``task_id`` holds. Idempotent."""
        gone = self._reservations.pop(task_id, None)
        if gone is not None:
            for uuid in gone.gpus:
                del self._owner[uuid]
                if uuid in self._lost:  # it vanished while reserved: it goes now
                    self._lost.discard(uuid)
                    self._gpus.pop(uuid, None)
        return gone

    def expire(self, now: float) -> tuple[Reservation, ...]:
        """Drop holds whose ``hold_until`` is at or before ``now``; return them."""
        lapsed = [
            r for r in self._reservations.values() if r.hold_until is not None and r.hold_until <= now
        ]
        for r in lapsed:
            self.release(r.task_id)
        return tuple(lapsed)
