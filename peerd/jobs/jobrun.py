"""Runs leased jobs through the executor and records every step in the store.

The runner owns the provider's jobs: it writes the lease and the task to the
store *before* starting the container, follows its logs into the
``LeasedJob``, records the result *before* the container is removed (the
executor's ``wait`` removes it), releases the job's capacity on every path,
and after a daemon restart re-attaches to the containers still running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from peerd.data.imagedata import ImageError
from peerd.data.imagereceive import ProviderImages
from peerd.data.jobdata import ProviderData, StagingFailed
from peerd.executor.contract import Executor, PullProgress, RunSpec
from peerd.executor.errors import ExecutorError
from peerd.executor.gpus import CapacityLedger
from peerd.jobs.leasedjob import LeasedJob, failed_result, result_from_outcome
from peerd.state.store import ResultRecord, Store, TaskRecord, TaskRole
from protocol import decode_as
from protocol.messages import Lease, LeaseTerms, Receipt, ReceiptTerms, Result, TaskState
from protocol.signing import Signer

log = logging.getLogger(__name__)


class PullLines:
    """A registry pull's progress as lines in the job's stderr (``peerd logs -f``) and the daemon's log:
    when a layer completes, and at most once a second in between."""

    def __init__(self, job: LeasedJob, image: str, clock: Callable[[], float], every: float = 1.0) -> None:
        self.job, self.image, self.clock, self.every = job, image, clock, every
        self.layers: dict[str, tuple[int, int]] = {}  # layer -> (bytes so far, total)
        self.done: set[str] = set()
        self.last = 0.0

    def __call__(self, event: PullProgress) -> None:
        if event.layer is None:
            return
        if event.status == "Downloading" and event.total:
            self.layers[event.layer] = (event.current or 0, event.total)
        finished = event.status in ("Download complete", "Already exists")
        if finished:
            self.done.add(event.layer)
            _, total = self.layers.get(event.layer, (0, 0))
            self.layers[event.layer] = (total, total)
        now = self.clock()
        if finished or now - self.last >= self.every:
            self.last = now
            current = sum(c for c, _ in self.layers.values())
            total = sum(t for _, t in self.layers.values())
            line = (f"pulling {self.image}: {len(self.done)} layer(s) done, "
                    f"{current / 1e6:.1f} of {total / 1e6:.1f} MB")
            log.info("job %s: %s", self.job.task_id, line)
            self.job.add_output("stderr", f"[peerd] {line}\n".encode())


class JobRunner:
    def __init__(
        self,
        *,
        signer: Signer,
        executor: Executor,
        ledger: CapacityLedger,
        store: Store,
        pids: int,
        log_limit: int,
        on_overhead: Callable[[float], None] | None = None,
        data: ProviderData | None = None,
        images: ProviderImages | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.executor = executor
        self.ledger = ledger
        self.store = store
        self.pids = pids
        self.log_limit = log_limit
        self.clock = clock
        self.on_overhead = on_overhead  # seconds the executor added around a job (start + teardown)
        self.data = data  # job data (inputs staged before the run, outputs kept); None: no chunk store
        self.images = images  # images carried by requesters (peerd.data.imagereceive); None: none taken
        self.jobs: dict[str, LeasedJob] = {}
        self.on_change: Callable[[], None] | None = None  # a job started or ended: what we offer changed
        self._staging: dict[str, trio.CancelScope] = {}  # jobs staging their inputs: cancel() ends it
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._recover()
            task_status.started()
            await trio.sleep_forever()

    def get(self, task_id: str) -> LeasedJob | None:
        return self.jobs.get(task_id)

    def knows(self, task_id: str) -> bool:
        return task_id in self.jobs

    async def is_local(self, task_id: str, requester: str) -> bool:
        """Is this our own requester's task (``--local``), recorded on the requester side?"""
        record = await self.store.get_task(task_id)
        return (
            record is not None and record.role is TaskRole.REQUESTER
            and requester == self.signer.peer_id and record.requester == requester
        )

    async def id_taken(self, task_id: str, requester: str) -> bool:
        """A task id seen before here that is not our own local task: refuse it."""
        if task_id in self.jobs:
            return True
        return await self.store.get_task(task_id) is not None and not await self.is_local(task_id, requester)

    # ------------------------------------------------------------ launching
    async def launch(self, terms: LeaseTerms, lease: Lease, spec: RunSpec) -> LeasedJob:
        """Record the lease, then start the job in the runner's nursery."""
        assert self._nursery is not None, "JobRunner.run() must be started first"
        now = self.clock()
        # A --local task already has this node's requester record under the same id:
        # the requester side records it, the provider side only runs it.
        persist = not await self.is_local(terms.task_id, terms.requester)
        if persist:
            await self.store.create_task(
                TaskRecord(
                    task_id=terms.task_id, role=TaskRole.PROVIDER, state=TaskState.RUNNING, spec=terms.spec,
                    requester=terms.requester, created_at=now, updated_at=now, provider=terms.provider,
                    price=terms.price, gpus=terms.gpus,
                )
            )
            await self.store.put_lease(terms.task_id, lease, terms.expires_at)
        job = LeasedJob(terms=terms, lease=lease, max_log_bytes=self.log_limit, persist=persist)
        self.jobs[terms.task_id] = job
        self._nursery.start_soon(self._run_job, job, spec)
        self._changed()
        return job

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _run_job(self, job: LeasedJob, spec: RunSpec | None) -> None:
        """Start (unless re-attaching), follow logs, wait, record; always release."""
        try:
            result = await self._execute(job, spec)
            self.ledger.release(job.task_id)  # its slot is free before the result goes out: the requester
            self._changed()  # (and others, through the advert) may ask for it at once
            await self._finish(job, result)
        finally:
            self.ledger.release(job.task_id)  # the container has exited: what it held is free
            self.jobs.pop(job.task_id, None)
            self._changed()  # e.g. re-advertise at once: requesters with queued tasks wait for this room
        await self._removed(job.task_id)
        if self.data is not None:  # the outputs stay pinned (output_retention); inputs and copies go
            with trio.CancelScope(shield=True):
                await self.data.finished(job.task_id, job.result.output_digest if job.result else "")
        # The outputs are in the chunk store; the task directory only held them on the way.
        try:
            await self.executor.discard(job.task_id)
        except ExecutorError as exc:
            log.warning("could not discard the outputs of %s: %s", job.task_id, exc)

    async def _stage(self, job: LeasedJob, spec: RunSpec) -> RunSpec | Result:
        """Fetch and write the job's inputs (state ``staging``); the RunSpec with their mounts,
        or the Result of a job that cannot start."""
        assert self.data is not None
        began = self.clock()
        job.staging = True
        job.wake()
        staged = spec
        try:
            with trio.CancelScope() as scope:
                self._staging[job.task_id] = scope
                if job.terms.spec.image_content is not None:
                    await self._stage_image(job)
                if job.terms.spec.inputs:
                    staged = await self.data.stage(job.terms, spec)
        except (StagingFailed, ImageError) as exc:
            log.warning("inputs of %s not staged: %s", job.task_id, exc)
            return failed_result(job.task_id, TaskState.FAILED, f"staging: {exc}")
        finally:
            self._staging.pop(job.task_id, None)
            job.staging = False
            job.staging_time = max(self.clock() - began, 0.0)
            job.wake()
        if scope.cancelled_caught:
            state = TaskState.INTERRUPTED if job.stop_reason == "interrupted" else TaskState.CANCELLED
            return failed_result(job.task_id, state, "stopped while staging the inputs")
        return staged

    async def _stage_image(self, job: LeasedJob) -> None:
        """The leased image, carried by the requester, loaded here (``peerd.data.imagereceive``)."""
        if self.images is None:
            raise ImageError("this provider takes no images carried by the requester")
        moved = await self.images.ensure(job.terms)
        log.info("image of %s ready (%d bytes fetched)", job.task_id, moved)

    async def _execute(self, job: LeasedJob, spec: RunSpec | None) -> Result:
        content = job.terms.spec.image_content
        if content is not None and self.images is not None and spec is not None:
            self.images.use(content.id)
        try:
            return await self._execute_staged(job, spec)
        finally:
            if content is not None and self.images is not None and spec is not None:
                self.images.done(content.id)

    async def _execute_staged(self, job: LeasedJob, spec: RunSpec | None) -> Result:
        needs_staging = job.terms.spec.inputs or job.terms.spec.image_content is not None
        if spec is not None and needs_staging and self.data is not None:
            staged = await self._stage(job, spec)
            if isinstance(staged, Result):
                return staged
            spec = staged
        launched = self.clock()
        if spec is not None:
            try:
                await self.executor.start(spec, on_pull=PullLines(job, spec.image, self.clock))
            except ExecutorError as exc:
                log.warning("job %s failed to start: %s", job.task_id, exc)
                return failed_result(job.task_id, TaskState.FAILED, f"{exc.reason.value}: {exc.detail}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_logs, job)
            try:
                outcome = await self.executor.outcome(job.task_id)  # the result need not wait for the clean-up
            except ExecutorError as exc:
                nursery.cancel_scope.cancel()
                return failed_result(job.task_id, TaskState.LOST, f"{exc.reason.value}: {exc.detail}")
            nursery.cancel_scope.cancel()
        if spec is not None and self.on_overhead is not None:
            # everything but the job's own run time: image check, create, start, collect (the removal follows)
            self.on_overhead(max(self.clock() - launched - outcome.wall_time, 0.0))
        return result_from_outcome(outcome, interrupted=job.stop_reason == "interrupted")

    async def _removed(self, task_id: str) -> None:
        """Once the result is out: end the task in the executor (its container is gone after this)."""
        try:
            await self.executor.wait(task_id)
        except ExecutorError as exc:  # never started (refused, staging failed) or already ended: nothing to remove
            log.debug("task %s: %s", task_id, exc)

    async def _follow_logs(self, job: LeasedJob) -> None:
        try:
            async for chunk in self.executor.logs(job.task_id):
                job.add_output(chunk.stream, chunk.data)
        except ExecutorError as exc:
            log.info("log stream of %s ended: %s", job.task_id, exc)

    async def _finish(self, job: LeasedJob, result: Result) -> None:
        now = self.clock()
        job.finish(result, self.signer, now)
        if not job.persist:
            return
        with trio.CancelScope(shield=True):
            await self.store.put_result(ResultRecord(result, finished_at=now))
            await self.store.update_task(
                job.task_id, now=now, state=result.state, exit_code=result.exit_code, detail=result.detail
            )
            assert job.receipt is not None
            await self._put_receipt(job, job.receipt)

    async def cancel(self, task_id: str, reason: str, *, interrupted: bool = False) -> bool:
        job = self.jobs.get(task_id)
        if job is None:
            return False
        job.stop_reason = "interrupted" if interrupted else "cancelled"
        staging = self._staging.get(task_id)
        if staging is not None:
            staging.cancel()
            return True
        try:
            await self.executor.stop(task_id, reason)
        except ExecutorError as exc:
            log.warning("stopping %s failed: %s", task_id, exc)
        return True

    async def store_receipt(self, job: LeasedJob, receipt: Receipt) -> None:
        """Replace the provider-signed proposal with the co-signed receipt."""
        job.receipt = receipt
        if job.persist:
            await self._put_receipt(job, receipt)

    async def _put_receipt(self, job: LeasedJob, receipt: Receipt) -> None:
        terms = decode_as(receipt.terms, ReceiptTerms)
        assert isinstance(terms, ReceiptTerms)
        await self.store.put_receipt(
            job.task_id, receipt, terms.provider, terms.requester, terms.cost, terms.finished_at, replace=True
        )

    # ------------------------------------------------------------ after a restart
    async def load_finished(self, task_id: str) -> LeasedJob | None:
        """A finished job from the store, so a late requester can still fetch it."""
        record = await self.store.get_task(task_id)
        lease = await self.store.get_lease(task_id)
        result = await self.store.get_result(task_id)
        if record is None or lease is None or result is None or record.role != TaskRole.PROVIDER:
            return None
        terms = decode_as(lease.terms, LeaseTerms)
        assert isinstance(terms, LeaseTerms)
        job = LeasedJob(terms=terms, lease=lease)
        job.result = result.result
        job.receipt = await self.store.get_receipt(task_id)
        job.done.set()
        return job

    async def _recover(self) -> None:
        """Re-attach running containers of unfinished tasks; settle the rest."""
        unfinished = await self.store.unfinished_tasks(TaskRole.PROVIDER)
        report = await self.executor.recover({t.task_id for t in unfinished})
        by_id = {t.task_id: t for t in unfinished}
        for task_id in report.reattached:
            lease = await self.store.get_lease(task_id)
            if lease is None:
                await self.executor.stop(task_id, "no lease recorded")
                continue
            terms = decode_as(lease.terms, LeaseTerms)
            assert isinstance(terms, LeaseTerms)
            self.ledger.adopt(task_id, cpus=terms.spec.cpus, memory=terms.spec.memory, gpus=terms.gpus)
            job = LeasedJob(terms=terms, lease=lease, max_log_bytes=self.log_limit)
            self.jobs[task_id] = job
            assert self._nursery is not None
            self._nursery.start_soon(self._run_job, job, None)
            log.info("re-attached job %s after restart", task_id)
        settled = set(report.reattached)
        for outcome in report.finished:
            settled.add(outcome.task_id)
            await self._settle_offline(outcome.task_id, result_from_outcome(outcome))
        for task_id in by_id.keys() - settled:
            await self._settle_offline(
                task_id, failed_result(task_id, TaskState.INTERRUPTED, "the provider restarted; no container")
            )
        if report.removed:
            log.info("removed %d orphan container(s): %s", len(report.removed), ", ".join(report.removed))
        if self.data is not None:  # copies staged before a crash, of jobs that will not run now
            await self.data.recover(self.jobs.keys())

    async def _settle_offline(self, task_id: str, result: Result) -> None:
        lease = await self.store.get_lease(task_id)
        now = self.clock()
        if lease is not None:
            terms = decode_as(lease.terms, LeaseTerms)
            assert isinstance(terms, LeaseTerms)
            job = LeasedJob(terms=terms, lease=lease)
            await self._finish(job, result)
        else:
            await self.store.update_task(task_id, now=now, state=result.state, detail=result.detail)
        if self.data is not None:  # inputs pinned before the crash go; outputs (if any) stay
            await self.data.finished(task_id, result.output_digest)
