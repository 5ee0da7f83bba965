"""The control socket's operations (``control.ops.NodeOps``) over a started node's services.

One method per request the control server takes: status, peers, peer, submit, task,
wait, tasks, logs, events, cancel, receipts, doctor, drain. Each reads the
store, the tracker or the peer table and answers with a view
(``peerd.daemon.views``); ``drain`` is the lifecycle's first step, without the stop.
``sample`` gives the node's figures to ``status`` and to the metrics endpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

import trio

from peerd import __version__
from peerd.control.ops import (
    NODE_DEFAULT,
    BadArgs,
    CancelView,
    CapacityView,
    DoctorCheck,
    DrainView,
    EventView,
    GpuSlotView,
    LogChunkView,
    OpError,
    PeerHistoryView,
    PeerNotFound,
    PeerView,
    Queueing,
    QueueView,
    RankView,
    ReachabilityStatus,
    ReceiptView,
    StatusView,
    TaskNotFound,
    TaskView,
)
from peerd.daemon.lifecycle import Lifecycle, RunState
from peerd.daemon.metrics import NodeSample, gpu_leases, status_counters
from peerd.daemon.services import Services
from peerd.daemon.views import observation_view, peer_view, rank_view, receipt_view, reputation_view, task_view
from peerd.data.imagedata import ImageError
from peerd.data.requestdata import InputError, InputSource
from peerd.errors import PeerdError
from peerd.executor.gpus import CapacityLedger
from peerd.jobs.tracking import LogGap
from peerd.jobs.verification import Verifier
from peerd.p2p.reachability import ReachabilityView
from peerd.p2p.relay import relay_of
from peerd.state.store import TaskRecord, TaskRole
from protocol.errors import ProtocolError
from protocol.messages import FINAL_STATES, JobSpec, TaskState
from protocol.schema import Value


class Operations:
    """Implements ``NodeOps``; ``nursery`` holds what an operation leaves running (placement timing)."""

    def __init__(self, services: Services, state: RunState, lifecycle: Lifecycle, nursery: trio.Nursery) -> None:
        self.services = services
        self.state = state
        self.lifecycle = lifecycle
        self._nursery = nursery
        self._started = trio.current_time()
        self._verification: Verifier | None = None  # replica groups (made on first use)

    # ------------------------------------------------------------ the node
    async def status(self) -> StatusView:
        sample = await self.sample()
        waiting = (TaskState.PLACING.value, TaskState.PENDING.value, TaskState.QUEUED.value)
        view = StatusView(
            peer_id=self.services.peer_id,
            addrs=self.services.p2p.listen_addrs(),
            role=self.services.role.value,
            peers_connected=sample.peers_connected,
            peers_known=sample.peers_known,
            tasks_running=sample.jobs_running,
            tasks_queued=sum(sample.tasks.get((TaskRole.REQUESTER.value, state), 0) for state in waiting),
            version=__version__,
            counters={**status_counters(sample), **(self.services.data.counters() if self.services.data else {})},
            draining=self.state.draining,
            config_reload=self.state.last_reload,
            reachability=reachability_status(self.services.p2p.reachability()),
            uptime=trio.current_time() - self._started,
        )
        if self.services.provider is not None:
            view["capacity"] = capacity_view(self.services.provider.ledger)
        return view

    async def sample(self) -> NodeSample:
        """The node's figures now, for a metrics scrape and ``status``."""
        s, p2p = self.services, self.services.p2p
        return NodeSample(
            peer_id=s.peer_id, role=s.role, version=__version__,
            peers_known=len(p2p.table.entries(s.clock())),
            peers_connected=len(p2p.connected_peers()),
            p2p_counters=p2p.counters,
            tasks=await s.store.count_tasks(),
            jobs_running=s.running(),
            gpu_leases=gpu_leases(s.provider.ledger if s.provider else None),
            draining=self.state.draining,
            config_reloads=self.state.config_reloads,
            config_reload_errors=self.state.config_reload_errors,
        )

    async def peers(self) -> list[PeerView]:
        now, book = self.services.clock(), self.services.reputation
        views = [peer_view(e.advert, list(e.addrs)) for e in self.services.p2p.table.entries(now)]
        if book is not None:
            for view in views:
                pid = view["peer_id"]
                view["reputation"] = reputation_view(book.standing(pid, now), book.tallies.get(pid))
        return views

    async def peer(self, peer_id: str, limit: int) -> PeerHistoryView:
        now, book = self.services.clock(), self.services.reputation
        if book is None:
            raise PeerdError("a seed node keeps no reputation")
        entry = self.services.p2p.table.get(peer_id, now)
        known = peer_view(entry.advert, list(entry.addrs)) if entry is not None else None
        history = await book.history(peer_id, limit)
        if known is None and not history:
            raise PeerNotFound(peer_id)
        return PeerHistoryView(
            peer_id=peer_id, addrs=known["addrs"] if known else [], advert=known["advert"] if known else None,
            reputation=reputation_view(book.standing(peer_id, now), book.tallies.get(peer_id)),
            history=[observation_view(o) for o in history],
        )

    async def doctor(self) -> list[DoctorCheck]:
        from peerd.host.doctor import doctor_views  # docker and NVML probes: loaded when asked for

        seen = self.services.p2p.reachability()
        return await doctor_views(self.state.config, seen.state, len({relay_of(a) for a in seen.relay_addrs}))

    async def drain(self) -> DrainView:
        running = self.lifecycle.drain()
        return DrainView(draining=True, tasks_running=running,
                         detail=f"no new tasks; {running} running task(s) may finish")

    # ------------------------------------------------------------ tasks
    async def submit(
        self, spec: JobSpec, *, local: bool, inputs: Sequence[tuple[str, str]] = (), replicas: int = 1,
        spot_check: float = 0.0, image_from_requester: bool = False, queue: Queueing = NODE_DEFAULT,
    ) -> str:
        if self.services.requester is None:
            raise PeerdError("a seed node does not take jobs")
        terms = self.services.requester.queue_terms(queue.timeout, queue.priority)
        since = trio.current_time()
        if replicas > 1 or spot_check:
            if inputs or local:
                raise BadArgs("verification runs on distinct providers, without inputs (for now)")
            if spot_check:
                task_id = await self._verifier().spot_check(spec, probability=spot_check)
            else:
                task_id = await self._verifier().submit(spec, replicas=replicas)
            self._nursery.start_soon(self._time_placement, task_id, since)
            return task_id
        task_id = self.services.requester.new_task_id()
        if inputs:
            spec = await self._with_inputs(task_id, spec, inputs)
        if not local:
            spec = await self._with_image(task_id, spec, image_from_requester)
        task_id = await self.services.requester.submit(spec, local=local, task_id=task_id, queue=terms)
        self._nursery.start_soon(self._time_placement, task_id, since)
        data = self.services.data
        if data is not None and data.requester is not None and (spec.inputs or spec.image_content):
            self._nursery.start_soon(self._release_when_final, task_id, spec)
        return task_id

    async def _release_when_final(self, task_id: str, spec: JobSpec) -> None:
        """Once the task is final: its input and image pins go, then the image's export if no live task
        carries it any more (its chunks are collected)."""
        data = self.services.data
        assert data is not None and data.requester is not None
        await data.requester.release_when_final(task_id, self.services.tracker)
        if data.images is not None and spec.image_content:
            await data.images.task_done(task_id)

    async def _with_inputs(self, task_id: str, spec: JobSpec, inputs: Sequence[tuple[str, str]]) -> JobSpec:
        """Job data (``peerd.data.requestdata``): store the inputs, name them in the spec."""
        data = self.services.data
        if data is None or data.requester is None:
            raise BadArgs("this node keeps no job data")
        try:
            refs = await data.requester.import_inputs(task_id, [InputSource(Path(s), d) for s, d in inputs])
            return dataclasses.replace(spec, inputs=refs)
        except InputError as exc:
            raise BadArgs(str(exc)) from exc
        except ProtocolError as exc:
            await data.chunks.release(task_id)
            raise BadArgs(f"inputs: {exc}") from exc

    async def _with_image(self, task_id: str, spec: JobSpec, asked: bool) -> JobSpec:
        """Images as job data (``peerd.data.imagedata``): carry the image when asked, or when this node's
        dockerd holds it and no registry does."""
        data = self.services.data
        if data is None or data.images is None:
            if asked:
                raise BadArgs("this node keeps no job data: it cannot carry an image")
            return spec
        if not asked and not await data.images.should_carry(spec.image):
            return spec
        try:
            return await data.images.carry(task_id, spec)
        except ImageError as exc:
            await data.chunks.release(task_id)
            raise BadArgs(str(exc)) from exc

    async def outputs(self, task_id: str) -> AsyncIterator[dict[str, Value]]:
        """The task's outputs: a header, then the files' bytes (``requestdata.output_frames``)."""
        await self._existing(task_id)
        data = self.services.data
        if data is None or data.requester is None:
            raise OpError("this node keeps no job data")
        async for frame in data.requester.output_frames(task_id):
            yield frame

    async def _time_placement(self, task_id: str, since: float) -> None:
        """Observe submit → lease (the first RUNNING event) for the placement histogram."""
        async with aclosing(self.services.tracker.follow_events(task_id)) as events:
            async for event in events:
                if event.state == TaskState.RUNNING:
                    self.services.metrics.observe_placement(trio.current_time() - since)
                    return

    async def _view(self, task_id: str) -> TaskView | None:
        record = await self.services.store.get_task(task_id)
        return None if record is None else await self._view_of(record)

    async def _view_of(self, record: TaskRecord, *, with_output: bool = True) -> TaskView:
        store, task_id = self.services.store, record.task_id
        view = task_view(
            record, await store.attempts(task_id), await store.get_result(task_id), await store.get_receipt(task_id),
            with_output=with_output,
        )
        if record.spec.nodes > 1 and record.role is TaskRole.REQUESTER:
            view["ranks"] = await self._ranks(task_id)
        if record.state in (TaskState.QUEUED, TaskState.PLACING) and record.role is TaskRole.REQUESTER:
            terms, requester = await store.queue_terms(task_id), self.services.requester
            if terms is not None and requester is not None:
                view["queue"] = QueueView(position=requester.queue.position(task_id), priority=terms[0],
                                          deadline=terms[1], queued_at=terms[2])
        return view

    async def _ranks(self, gang_id: str) -> list[RankView]:
        """A gang's ranks (``peerd.jobs.gang``), each from its own task, result and receipt."""
        store, ranks = self.services.store, []
        for rank, rank_task in await store.gang_ranks(gang_id):
            record = await store.get_task(rank_task)
            if record is not None:
                ranks.append(rank_view(rank, record, await store.get_result(rank_task),
                                       await store.get_receipt(rank_task)))
        return ranks

    async def _existing(self, task_id: str) -> TaskView:
        view = await self._view(task_id)
        if view is None:
            raise TaskNotFound(task_id)
        return view

    async def task(self, task_id: str) -> TaskView | None:
        return await self._view(task_id)

    async def wait(self, task_id: str) -> TaskView:
        view = await self._existing(task_id)
        if self.services.requester is not None:
            verified = await self._verifier().wait(task_id)
            if verified is not None:
                stands, verification = verified
                view = await self._existing(stands)
                view["verification"] = verification
                return view
        if TaskState(view["state"]) not in FINAL_STATES:
            await self.services.tracker.wait_final(task_id)
        return await self._existing(task_id)

    def _verifier(self) -> Verifier:
        if self._verification is None:
            s = self.services
            assert s.requester is not None
            self._verification = Verifier(s.requester, s.store, s.tracker, s.reputation, self._nursery, s.clock)
        return self._verification

    async def tasks(self, limit: int) -> list[TaskView]:
        """Recent tasks without their output (``show`` has it): a listing stays small."""
        return [await self._view_of(record, with_output=False)
                for record in await self.services.store.list_tasks(limit=limit)]

    async def logs(self, task_id: str, follow: bool) -> AsyncIterator[LogChunkView]:
        view = await self._existing(task_id)
        live = follow and TaskState(view["state"]) not in FINAL_STATES
        sent = False
        async for chunk in self.services.tracker.follow_logs(task_id, follow=live):
            sent = True
            if isinstance(chunk, LogGap):  # chunks trimmed before this reader saw them: say so
                yield LogChunkView(stream="stderr", data=chunk.render())
            else:
                yield LogChunkView(stream=chunk.stream.value, data=chunk.data)
        if not sent:  # after a restart only the stored result tails remain
            final = await self._view(task_id) or view
            if final["stdout"]:
                yield LogChunkView(stream="stdout", data=final["stdout"].encode())
            if final["stderr"]:
                yield LogChunkView(stream="stderr", data=final["stderr"].encode())

    async def events(self, task_id: str) -> AsyncIterator[EventView]:
        await self._existing(task_id)
        async for event in self.services.tracker.follow_events(task_id):
            yield EventView(task_id=task_id, state=event.state.value, detail=event.detail, at=self.services.clock())

    async def cancel(self, task_id: str) -> CancelView:
        view = await self._existing(task_id)
        requester, ours = self.services.requester, self.services.provider
        asked = requester is not None and await requester.cancel(task_id)
        if not asked and ours is not None:
            asked = await ours.runner.cancel(task_id, "cancelled by the provider's operator")
        detail = "cancel requested" if asked else "the task is not running"
        return CancelView(task_id=task_id, state=view["state"], detail=detail)

    async def receipts(self, limit: int) -> list[ReceiptView]:
        return [receipt_view(r.receipt) for r in await self.services.store.list_receipts(limit)]


def reachability_status(seen: ReachabilityView) -> ReachabilityStatus:
    return ReachabilityStatus(reachability=str(seen.state), relay_addrs=list(seen.relay_addrs), hint=seen.hint,
                              relays_lost=seen.relays_lost)


def capacity_view(ledger: CapacityLedger) -> CapacityView:
    """Totals and what is free; each GPU with the task holding it (a hold or a lease)."""
    free = ledger.free()
    holder = {uuid: r.task_id for r in ledger.reservations() for uuid in r.gpus}
    gpus = [GpuSlotView(uuid=g.uuid, model=g.name, memory=g.memory_total, task_id=holder.get(g.uuid, ""))
            for g in ledger.gpus]
    return CapacityView(cpus=ledger.total_cpus, cpus_free=free.cpus, memory=ledger.total_memory,
                        memory_free=free.memory, gpus=gpus)
