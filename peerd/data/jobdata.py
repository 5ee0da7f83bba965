"""Job data on the provider: room for inputs, staging them before the run, keeping the outputs.

``ProviderData`` is what the provider's admission and job runner call:

- ``room_refusal(spec)`` at admission: the inputs' declared total must fit
  in what the chunk store may still take (its quota less the chunks other
  tasks reference; without a quota, the free disk under the store), else the
  detail of a signed ``Reject(inputs_too_large)``;
- ``stage(terms, spec)`` after the lease, before the container starts: for
  each ``InputRef`` the manifest (by id) and then its chunks are fetched from
  the requester (``peerd.transfer.fetch``: chunks already in the store are not
  fetched again; everything is pinned for the task), the manifest's total must
  equal the size the lease declared, and its files are written below
  ``<staging_dir>/<task>/<i>`` (``peerd.staging.materialize``) and returned as
  read-only ``InputMount``s. Staging must end before the lease's grace is used
  up (``expires_at - timeout``), so a job still gets its full run time;
- ``finished(task_id, output_digest)`` once the result is recorded: the task's
  pins shrink to its output manifest and chunks (one transaction), and the
  staged copies are deleted;
- ``recover(live)`` when the job runner starts: a job SIGKILLed while staging
  is settled by the runner (no container: ``interrupted``), which then calls
  ``finished`` for it; ``recover`` removes every ``<staging_dir>/<task>`` of
  a task that is not ``live`` (a re-attached container still mounts its
  copies), so no half-staged copy outlives a crash.

``OutputRetention`` (both roles) releases a finished task's pins once it
finished more than ``output_retention`` seconds ago; until then the node
serves the outputs to the other party of the lease (``transfer.lease_access``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from peerd.data.blobstore import BlobStoreError, ChunkStore
from peerd.data.staging import StagingError, materialize
from peerd.data.transfer import OpenStream, TransferError, fetch
from peerd.errors import PeerdError
from peerd.executor.contract import InputMount, RunSpec
from peerd.executor.errors import ExecutorError
from peerd.executor.outputs import discard_task_dir
from peerd.state.store import Store
from protocol.errors import ProtocolError
from protocol.manifest import Manifest, decode_manifest
from protocol.messages import JobSpec, LeaseTerms

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_RETENTION = 24 * 3600.0


class StagingFailed(PeerdError):
    """The inputs could not be staged; the job does not start."""


def parse_digest(text: str) -> bytes | None:
    """``"sha256:<hex>"`` → the 32 raw bytes; None for ``""`` or anything else."""
    if not text.startswith("sha256:") or len(text) != 71:
        return None
    try:
        return bytes.fromhex(text[7:])
    except ValueError:
        return None


def total_size(manifest: Manifest) -> int:
    return sum(entry.size for entry in manifest.files)


@dataclass(frozen=True)
class DataSettings:
    staging_dir: Path  # <home>/staging: staged input copies, one directory per task
    output_retention: float = DEFAULT_OUTPUT_RETENTION
    io_timeout: float = 30.0


async def load_manifest(store: ChunkStore, manifest_id: bytes) -> Manifest:
    """A manifest the store holds (its bytes were checked against the id when stored)."""
    data = await store.get(manifest_id)
    if data is None:
        raise StagingFailed(f"manifest sha256:{manifest_id.hex()} is not in the chunk store")
    try:
        return decode_manifest(data)
    except ProtocolError as exc:
        raise StagingFailed(f"manifest sha256:{manifest_id.hex()} is not valid: {exc}") from exc


async def fetch_manifest(
    open_stream: OpenStream, peer: str, task_id: str, manifest_id: bytes, store: ChunkStore, *, timeout: float,
) -> tuple[Manifest, int]:
    """Fetch a manifest and all its chunks from ``peer`` for ``task_id``; (manifest, chunk bytes moved)."""
    first = await fetch(open_stream, [peer], task_id, [manifest_id], store, timeout=timeout)
    manifest = await load_manifest(store, manifest_id)
    rest = await fetch(open_stream, [peer], task_id, manifest.digests(), store, timeout=timeout)
    return manifest, first.chunk_bytes + rest.chunk_bytes


class ProviderData:
    """The provider's side of job data (see the module docstring)."""

    def __init__(
        self, store: ChunkStore, open_stream: OpenStream, settings: DataSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.open_stream = open_stream
        self.settings = settings
        self.clock = clock
        self.bytes_fetched = 0  # input chunk bytes moved over the network, all tasks

    async def room(self) -> int:
        room = await self.store.room()
        if room is None:
            return shutil.disk_usage(self.store.root).free
        return room

    async def room_refusal(self, spec: JobSpec) -> str | None:
        """Why this node cannot take these inputs, or None."""
        if not spec.inputs:
            return None
        room = await self.room()
        if spec.input_size > room:
            return f"inputs of {spec.input_size} bytes; room for {room} bytes of job data here"
        return None

    def check_targets(self, spec: JobSpec, placeholder: Path) -> None:
        """Admission: the destinations must be mountable (ExecutorError otherwise)."""
        for ref in spec.inputs:
            InputMount(placeholder, ref.dest)

    def task_dir(self, task_id: str) -> Path:
        return self.settings.staging_dir / task_id

    async def stage(self, terms: LeaseTerms, spec: RunSpec) -> RunSpec:
        """Fetch and write the leased inputs; the RunSpec with their mounts. StagingFailed if not."""
        deadline = terms.expires_at - terms.spec.timeout
        with trio.move_on_at(trio.current_time() + max(deadline - self.clock(), 0.0)) as scope:
            mounts = await self._stage(terms)
        if scope.cancelled_caught:
            raise StagingFailed("staging the inputs took longer than the lease's grace")
        try:
            return replace(spec, inputs=tuple(mounts))
        except ExecutorError as exc:
            raise StagingFailed(f"inputs cannot be mounted: {exc}") from exc

    async def _stage(self, terms: LeaseTerms) -> list[InputMount]:
        root = self.task_dir(terms.task_id)
        await trio.to_thread.run_sync(discard_task_dir, root)  # a half-staged copy from before a restart
        await trio.Path(root).mkdir(parents=True, mode=0o755)
        mounts = []
        for index, ref in enumerate(terms.spec.inputs):
            manifest_id = parse_digest(ref.manifest)
            assert manifest_id is not None  # InputRef checked it
            try:
                manifest, moved = await fetch_manifest(
                    self.open_stream, terms.requester, terms.task_id, manifest_id, self.store,
                    timeout=self.settings.io_timeout,
                )
            except (TransferError, BlobStoreError) as exc:
                raise StagingFailed(f"input {ref.dest}: {exc}") from exc
            self.bytes_fetched += moved
            if total_size(manifest) != ref.size:
                raise StagingFailed(f"input {ref.dest}: {total_size(manifest)} bytes, the lease says {ref.size}")
            if ref.file and len(manifest.files) != 1:
                raise StagingFailed(f"input {ref.dest}: a file input must hold exactly one file")
            dest = root / str(index)
            await trio.Path(dest).mkdir(mode=0o755)
            try:
                await materialize(manifest, self.store, dest)
            except StagingError as exc:
                raise StagingFailed(f"input {ref.dest}: {exc}") from exc
            source = dest / manifest.files[0].path if ref.file else dest
            mounts.append(InputMount(source, ref.dest))
        return mounts

    async def finished(self, task_id: str, output_digest: str) -> None:
        """Keep only the outputs pinned for the task; delete the staged copies."""
        output_id = parse_digest(output_digest)
        keep: list[bytes] = []
        if output_id is not None and output_id in await self.store.pinned(task_id):
            try:
                manifest = await load_manifest(self.store, output_id)
                keep = [output_id, *manifest.digests()]
            except StagingFailed as exc:
                log.warning("outputs of %s cannot be kept: %s", task_id, exc)
        await self.store.keep_only(task_id, keep)
        await trio.to_thread.run_sync(discard_task_dir, self.task_dir(task_id))


    async def recover(self, live: Collection[str]) -> list[str]:
        """Remove the staged copies of every task not in ``live``; returns their task ids."""
        root = self.settings.staging_dir
        leftovers = await trio.to_thread.run_sync(_leftover_dirs, root, frozenset(live))
        for task_dir in leftovers:
            await trio.to_thread.run_sync(discard_task_dir, task_dir)
        if leftovers:
            log.info("removed %d staged input cop(ies) left by a restart", len(leftovers))
        return [d.name for d in leftovers]


def _leftover_dirs(root: Path, live: frozenset[str]) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.name not in live and p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []


class OutputRetention:
    """Releases the chunk pins of tasks that finished more than ``retention`` seconds ago."""

    def __init__(
        self, chunks: ChunkStore, store: Store, retention: float, *, active: Callable[[], Collection[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chunks = chunks
        self.store = store
        self.retention = retention
        self.active = active
        self.clock = clock
        self.released = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = min(max(self.retention / 10, 1.0), 600.0)
        while True:
            try:
                await self.sweep()
            except (BlobStoreError, PeerdError) as exc:
                log.warning("output retention: %s", exc)
            await trio.sleep(interval)

    async def sweep(self) -> list[str]:
        """Release what is due now; returns the released task ids."""
        now = self.clock()
        active = set(self.active())
        due = []
        for task_id in await self.chunks.tasks():
            if task_id in active:
                continue
            result = await self.store.get_result(task_id)
            if result is not None and now - result.finished_at >= self.retention:
                await self.chunks.release(task_id)
                due.append(task_id)
        self.released += len(due)
        if due:
            log.info("released the job data of %d task(s) past output_retention", len(due))
        return due
