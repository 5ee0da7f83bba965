"""A job's /out: bounded while it runs, then a manifest whose chunks go into the chunk store.

``prepare_out_dir`` makes the task's host directory that the container gets at
/out: a tmpfs of ``limit`` bytes (``outmount``) where this host lets the
executor mount one, else a plain directory (bounded only when collected).

``collect_outputs`` runs after the exit: it builds the manifest of /out's
regular files (links, FIFOs and the like are left out and listed: the job
wrote them, the host must not follow them), pins its id and chunk digests for
the task in the injected ``OutputStore``, stores the manifest and every chunk
(read again and checked against the manifest), then unmounts and deletes the
directory: only the chunks stay, and the provider's disk holds at most the
output limit for the task (the tmpfs is in memory, charged to the job).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from peerd.data.manifests import ManifestBuildError, TreeTooLarge, build_manifest, read_chunks
from peerd.errors import PeerdError
from peerd.executor.contract import OutputStore
from peerd.executor.outmount import is_full, mount_bounded, unmount
from protocol.manifest import MAX_FILES, Manifest, ManifestLimits, encode_manifest, manifest_id

log = logging.getLogger(__name__)

OUT_INODES = MAX_FILES + 4096  # a manifest's files plus room for directories


@dataclass(frozen=True)
class OutputManifest:
    manifest_id: bytes | None  # None when /out held no file (or could not be described)
    size: int  # bytes of file data
    skipped: tuple[str, ...]  # relative paths left out (links, special files, bad names)
    over_limit: bool  # /out was full at the exit, or (unbounded) held more than the limit
    problem: str = ""  # why /out gave no manifest, for the outcome's detail

    @property
    def digest(self) -> str:
        return self.manifest_id.hex() if self.manifest_id is not None else ""


EMPTY = OutputManifest(None, 0, (), False)


def _remove_tree(path: Path) -> None:
    def report(_func: object, failed: str, exc_info: tuple[type, BaseException, object]) -> None:
        log.warning("could not remove %s: %s", failed, exc_info[1])

    shutil.rmtree(path, onerror=report)


def _remove_out_dir(out_dir: Path) -> None:
    unmount(out_dir)
    if out_dir.exists():
        _remove_tree(out_dir)


def parse_user(user: str | None) -> tuple[int | None, int | None]:
    """Numeric "uid[:gid]" -> (uid, gid); names or None -> (None, None)."""
    if user is None:
        return None, None
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None, None
    return int(uid), int(gid) if gid else None


def prepare_out_dir(out_dir: Path, user: str | None, limit: int) -> bool:
    """Blocking: a fresh, empty ``out_dir`` that the job's user (and only it, where the host
    allows) can write; True when it is a tmpfs bounded at ``limit`` bytes. Its parents are
    private to the daemon's user."""
    out_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_out_dir(out_dir)
    out_dir.mkdir(mode=0o700)
    uid, gid = parse_user(user)
    mode = 0o700 if uid is not None else 0o777  # the container's user unknown: anyone in it
    if mount_bounded(out_dir, limit, inodes=OUT_INODES, mode=mode, uid=uid, gid=gid):
        return True
    if uid is not None:
        try:
            os.chown(out_dir, uid, gid if gid is not None else -1)
            return False
        except PermissionError:
            log.info("cannot chown %s to %s (not root): making it world-writable", out_dir, user)
    os.chmod(out_dir, 0o777)
    return False


def describe_outputs(out_dir: Path, limit: int) -> tuple[OutputManifest, Manifest | None]:
    """Blocking: the manifest of ``out_dir`` (files over ``limit`` bytes in all: none)."""
    if not out_dir.is_dir():
        return EMPTY, None
    full = os.path.ismount(out_dir) and is_full(out_dir)
    skipped: list[str] = []
    try:
        manifest = build_manifest(out_dir, limits=ManifestLimits(max_total_size=max(limit, 1)), skipped=skipped)
        if manifest.total_size > limit:  # a limit of 0, on an unbounded directory
            raise TreeTooLarge(f"{out_dir}: more than {limit} bytes")
    except TreeTooLarge:
        return OutputManifest(None, 0, tuple(skipped), True, f"more than {limit} bytes"), None
    except ManifestBuildError as exc:
        return OutputManifest(None, 0, tuple(skipped), full, str(exc)), None
    if not manifest.files:
        return OutputManifest(None, 0, tuple(skipped), full), None
    mid = manifest_id(encode_manifest(manifest))
    return OutputManifest(mid, manifest.total_size, tuple(skipped), full), manifest


async def _store(out_dir: Path, manifest: Manifest, task_id: str, store: OutputStore) -> None:
    """Pin first (so nothing collects a chunk of this import), then put the manifest and every
    chunk, read again and checked against the manifest."""
    data = encode_manifest(manifest)
    mid = manifest_id(data)
    await store.pin(task_id, [mid, *manifest.digests()])
    await store.put(mid, data)
    for entry in manifest.files:
        chunks = read_chunks(out_dir / entry.path, manifest.chunk_size)
        for expected in entry.chunks:
            chunk = await trio.to_thread.run_sync(next, chunks, None)
            if chunk is None or hashlib.sha256(chunk).digest() != expected:
                raise ManifestBuildError(f"{entry.path}: changed after the job ended")
            await store.put(expected, chunk)


async def collect_outputs(out_dir: Path, task_id: str, limit: int, store: OutputStore | None) -> OutputManifest:
    """Describe ``out_dir``, store its chunks for ``task_id`` (when a store is given), then delete it."""
    try:
        result, manifest = await trio.to_thread.run_sync(describe_outputs, out_dir, limit)
        if manifest is not None and store is not None:
            try:
                await _store(out_dir, manifest, task_id, store)
            except (PeerdError, OSError) as exc:
                log.warning("outputs of task %s not stored: %s", task_id, exc)
                return OutputManifest(None, 0, result.skipped, result.over_limit, f"not stored: {exc}")
        return result
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_out_dir, out_dir)


def discard_task_dir(task_dir: Path) -> None:
    """Blocking: remove a task's host directory entirely (unmounting its /out first)."""
    _remove_out_dir(task_dir / "out")
    if task_dir.exists():
        _remove_tree(task_dir)
