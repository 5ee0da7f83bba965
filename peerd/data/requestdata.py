"""Job data on the requester: inputs in, outputs out.

- ``import_inputs``: each input (a file or a directory the daemon's user can
  read) becomes a manifest whose chunks go into the chunk store pinned for the
  task, *before* the task is submitted; the JobSpec then names the manifest ids
  (``InputRef``), so the lease binds the exact data. The node serves those
  chunks to the lease's provider (``/peerd/blob/1.0.0``, ``lease_access``).
  Once the task is final its input pins are dropped (``release_when_final``);
  after a restart (SIGKILL included) ``recover`` does the same for every task
  that still pins chunks: at once for a final one, when final for the others.
- ``outputs``: the receipt's ``output_digest`` is the output manifest's id;
  the manifest and its chunks are fetched from the provider (only what the
  store lacks), every chunk re-hashed on the way in and pinned for the task.
- ``output_frames``: what the control op ``outputs`` streams to a client: a
  header (the manifest's bytes, its id, size and file count), then the files'
  bytes in manifest order in pieces of at most ``PIECE`` bytes. The client
  checks the manifest against the co-signed receipt and every chunk against
  the manifest (``peerd.data.unpack``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from peerd.data.blobstore import BlobStoreError, BlockingChunkStore, ChunkStore
from peerd.data.jobdata import fetch_manifest, load_manifest, parse_digest, total_size
from peerd.data.manifests import ManifestBuildError, import_directory, read_chunks, store_chunks
from peerd.data.transfer import OpenStream, TransferError, TransferIncomplete
from peerd.errors import PeerdError
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import Store, TaskRole
from protocol import decode_as
from protocol.manifest import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, encode_manifest, manifest_id
from protocol.messages import FINAL_STATES, InputRef, ReceiptTerms, TaskState
from protocol.schema import Value

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes of file data per control frame (the control codec's frames are at most 4 MiB)


class InputError(PeerdError):
    """An input cannot be used (missing, unreadable, a link, too large); names the path."""


class OutputsUnavailable(PeerdError):
    """A task's outputs cannot be had (none, not final, provider gone, no longer kept); says which."""


@dataclass(frozen=True)
class InputSource:
    """A local file or directory and where the job sees it."""

    source: Path
    dest: str


def _import_file(path: Path, task_id: str, chunk_size: int, store: BlockingChunkStore) -> tuple[bytes, Manifest]:
    """One file as a one-file manifest (under its own name), pinned and stored for ``task_id``."""
    digests, size = [], 0
    for chunk in read_chunks(path, chunk_size):
        digests.append(hashlib.sha256(chunk).digest())
        size += len(chunk)
    try:
        mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode) & 0o777
        manifest = Manifest(chunk_size, (FileEntry(path.name, mode, size, tuple(digests)),))
        data = encode_manifest(manifest)
    except (OSError, ValueError) as exc:
        raise ManifestBuildError(f"{path}: {exc}") from exc
    mid = manifest_id(data)
    store.pin(task_id, [mid, *manifest.digests()])
    store.put(mid, data)
    store_chunks(path.parent, manifest, store.put)
    return mid, manifest


def _import(source: Path, task_id: str, store: BlockingChunkStore) -> tuple[bytes, Manifest, bool]:
    try:
        mode = os.stat(source, follow_symlinks=False).st_mode
    except OSError as exc:
        raise InputError(f"{source}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        if not os.access(source, os.R_OK | os.X_OK):
            raise InputError(f"{source}: not readable by the daemon's user")
        mid, manifest = import_directory(source, store, task_id)
        return mid, manifest, False
    if stat.S_ISREG(mode):
        if not os.access(source, os.R_OK):
            raise InputError(f"{source}: not readable by the daemon's user")
        mid, manifest = _import_file(source, task_id, DEFAULT_CHUNK_SIZE, store)
        return mid, manifest, True
    raise InputError(f"{source}: not a regular file or directory")


class RequesterData:
    """The requester's side of job data (see the module docstring)."""

    def __init__(
        self, chunks: ChunkStore, store: Store, open_stream: OpenStream, *, io_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chunks = chunks
        self.store = store
        self.open_stream = open_stream
        self.io_timeout = io_timeout
        self.clock = clock
        self.bytes_fetched = 0  # output chunk bytes moved over the network, all tasks

    async def import_inputs(self, task_id: str, sources: Sequence[InputSource]) -> tuple[InputRef, ...]:
        """Store every input for ``task_id``; their ``InputRef``s. InputError naming the path if not."""
        refs = []
        try:
            for one in sources:
                try:
                    mid, manifest, is_file = await self.chunks.run_blocking(partial(_import, one.source, task_id))
                    refs.append(InputRef(manifest="sha256:" + mid.hex(), dest=one.dest, size=total_size(manifest),
                                         file=is_file))
                except (ManifestBuildError, BlobStoreError, ValueError) as exc:
                    raise InputError(f"input {one.source}: {exc}") from exc
        except BaseException:  # failed or cancelled: drop the pins taken so far, then re-raise
            with trio.CancelScope(shield=True):  # a cancelled task's await would not run the release
                await self.chunks.release(task_id)
            raise
        return tuple(refs)

    async def share_inputs(self, task_id: str, other: str) -> None:
        """Pin ``task_id``'s input chunks for ``other`` too (a gang's rank: its provider fetches under the
        rank's own lease, and a node serves a task's chunks only to its lease's parties)."""
        await self.chunks.pin(other, sorted(await self.chunks.pinned(task_id)))

    async def unshare_inputs(self, other: str) -> None:
        """Drop what ``share_inputs`` pinned for ``other`` (the rank ended)."""
        await self.chunks.release(other)

    async def release_when_final(self, task_id: str, tracker: TaskTracker) -> None:
        """Drop the task's input pins once it is final (outputs fetched later pin again)."""
        await tracker.wait_final(task_id)
        await self.chunks.keep_only(task_id, await self._output_pins(task_id))

    async def recover(self, tracker: TaskTracker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                      ) -> None:
        """After a restart: drop the input pins of this node's requester tasks once final.

        Started once the final tasks' pins are dropped; runs on until the others are final.
        """
        waiting = []
        for task_id in await self.chunks.tasks():
            record = await self.store.get_task(task_id)
            if record is None or record.role is not TaskRole.REQUESTER:
                continue  # a provider task's pins are the job runner's (or output retention's)
            if record.state in FINAL_STATES:
                await self.chunks.keep_only(task_id, await self._output_pins(task_id))
            else:
                waiting.append(task_id)
        task_status.started()
        async with trio.open_nursery() as nursery:
            for task_id in waiting:
                nursery.start_soon(self.release_when_final, task_id, tracker)

    async def _output_pins(self, task_id: str) -> list[bytes]:
        terms = await self._receipt_terms(task_id)
        output_id = parse_digest(terms.output_digest) if terms else None
        if output_id is None or output_id not in await self.chunks.pinned(task_id):
            return []
        try:
            return [output_id, *(await load_manifest(self.chunks, output_id)).digests()]
        except PeerdError:
            return []

    async def _receipt_terms(self, task_id: str) -> ReceiptTerms | None:
        receipt = await self.store.get_receipt(task_id)
        if receipt is None:
            return None
        terms = decode_as(receipt.terms, ReceiptTerms)
        assert isinstance(terms, ReceiptTerms)
        return terms

    async def outputs(self, task_id: str) -> tuple[bytes, Manifest, int]:
        """The task's output manifest (id, manifest, bytes fetched now), its chunks all in the store."""
        record = await self.store.get_task(task_id)
        if record is None or record.role is not TaskRole.REQUESTER:
            raise OutputsUnavailable(f"task {task_id} was not submitted from this node")
        terms = await self._receipt_terms(task_id)
        if terms is None:
            state = record.state.value if isinstance(record.state, TaskState) else str(record.state)
            raise OutputsUnavailable(f"task {task_id} has no receipt yet (state {state})")
        output_id = parse_digest(terms.output_digest)
        if output_id is None:
            raise OutputsUnavailable(f"task {task_id} has no outputs (its job wrote nothing to /out, or the "
                                     "provider could not keep them)")
        finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(terms.finished_at))
        try:
            manifest, moved = await fetch_manifest(self.open_stream, terms.provider, task_id, output_id,
                                                   self.chunks, timeout=self.io_timeout)
        except TransferIncomplete as exc:
            report = exc.report
            why = "; ".join({**report.dropped, **report.bad_peers}.values())
            if why:
                raise OutputsUnavailable(
                    f"outputs of {task_id}: provider {terms.provider} is unreachable or refused ({why}); "
                    f"the task finished at {finished}") from exc
            raise OutputsUnavailable(
                f"outputs of {task_id}: the provider {terms.provider} no longer keeps them (expired: the task "
                f"finished at {finished}, providers keep outputs for their output_retention)") from exc
        except (TransferError, BlobStoreError) as exc:
            raise OutputsUnavailable(f"outputs of {task_id}: {exc}") from exc
        self.bytes_fetched += moved
        return output_id, manifest, moved

    async def output_frames(self, task_id: str) -> AsyncIterator[dict[str, Value]]:
        """The control stream of ``outputs``: header, then file bytes in pieces."""
        output_id, manifest, moved = await self.outputs(task_id)
        data = await self.chunks.get(output_id)
        if data is None:
            raise OutputsUnavailable(f"outputs of {task_id}: the manifest left the chunk store")
        yield {"manifest": data, "id": "sha256:" + output_id.hex(), "size": total_size(manifest),
               "files": len(manifest.files), "fetched": moved}
        for entry in manifest.files:
            for digest in entry.chunks:
                chunk = await self.chunks.get(digest)
                if chunk is None:
                    raise OutputsUnavailable(f"outputs of {task_id}: a chunk of {entry.path} is missing or corrupt")
                for start in range(0, len(chunk), PIECE):
                    yield {"data": chunk[start:start + PIECE]}
