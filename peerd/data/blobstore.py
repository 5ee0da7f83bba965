"""The node's content-addressed chunk store, ``<home>/blobs``.

Layout::

    blobs/ab/abcdef…(64 hex)   one chunk, named by the SHA-256 of its bytes
    blobs/tmp/                 chunks being written (emptied at every open)
    blobs/refs.db              which task references which digest (SQLite)

Writing: ``put`` checks that the data hashes to the digest (``put_verified``
takes a ``protocol.blobxfer.VerifiedChunk``, hashed when it was made, e.g. by
the fetcher's machine on arrival, and does not hash again), writes it to a
new file in ``tmp/`` (same file system; ``chunkfile``: past the page cache
where the file system allows), fsyncs it, checks its length and renames it
into place. A chunk file therefore either does not exist or is
complete: a SIGKILL or crash mid-write leaves at most a temp file, removed at
the next open. The rename is not followed by a directory fsync: after a
power loss a chunk may be missing (fetched again), never partial.

Reading: ``get`` (bytes) and ``get_verified`` (a ``VerifiedChunk``, which the
server's machine sends without hashing again) re-hash every chunk they read;
one that does not match (disk corruption, an outside edit) is deleted and
reported missing, so a corrupt chunk is never served.

References: a task pins the digests it needs (``pin``: its manifest id and
every chunk digest) before fetching them and releases them when it is done;
a digest's reference count is the number of tasks pinning it. Pins live in
``refs.db``, the store's own SQLite file, not in ``state.db``: the chunk store
is one self-contained directory (deleting ``blobs/`` leaves nothing dangling),
and its schema versions independently of the state database's migrations.
Each pin or release is one transaction committed with ``synchronous=FULL``,
so a task's pins are all there or none are, even across SIGKILL.
``retain_tasks`` drops the pins of tasks the node no longer knows.

Space: ``quota`` bytes (0 = no limit) bound the chunks stored. ``put`` first
garbage-collects unreferenced chunks, oldest first, to make room, then raises
``QuotaExceeded`` if referenced chunks alone leave none. ``gc()`` removes
every unreferenced chunk (or only down to a target size).

Everything in ``BlockingChunkStore`` blocks (file I/O, fsync, SQLite);
``ChunkStore`` is the async adapter the daemon uses: every call runs in
``trio.to_thread`` behind a ``CapacityLimiter(1)``, one call at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from peerd.data.chunkfile import ChunkWriter
from peerd.errors import PeerdError
from protocol.blobxfer import VerifiedChunk
from protocol.errors import LocalProtocolError
from protocol.manifest import MAX_CHUNK_SIZE

log = logging.getLogger(__name__)

BLOBS_DIR = "blobs"
TMP_DIR = "tmp"
REFS_DB = "refs.db"
REFS_SCHEMA_VERSION = 1
DIGEST_SIZE = 32
_HEX = frozenset("0123456789abcdef")

T = TypeVar("T")


class BlobStoreError(PeerdError):
    """The chunk store failed or refused a write."""


class ChunkMismatch(BlobStoreError):
    """Data given to ``put`` does not hash to the digest it was given with."""


class QuotaExceeded(BlobStoreError):
    """Storing a chunk would exceed the store's quota even after garbage collection."""

    def __init__(self, quota: int, used: int, needed: int) -> None:
        super().__init__(
            f"chunk store quota of {quota} bytes (storage.blob_quota) exceeded: {used} bytes held "
            f"by referenced chunks, {needed} more needed"
        )
        self.quota, self.used, self.needed = quota, used, needed


@dataclass(frozen=True, slots=True)
class Usage:
    """What the store holds now."""

    chunks: int
    bytes: int
    quota: int  # 0 = no limit
    referenced_chunks: int
    tasks: int


@dataclass(frozen=True, slots=True)
class GcReport:
    removed: int
    freed: int  # bytes


@dataclass(slots=True)
class _Entry:
    size: int
    stored_ns: int  # file mtime: the order garbage collection removes in


def blobs_path(home: Path) -> Path:
    return home / BLOBS_DIR


def verify(digest: bytes, data: bytes) -> VerifiedChunk:
    """Hash ``data``: the VerifiedChunk, or ChunkMismatch (BlobStoreError for a bad digest or size)."""
    _check_digest(digest)
    try:
        return VerifiedChunk(digest=digest, data=data)
    except LocalProtocolError as exc:
        if exc.code == "bad_chunk":
            raise ChunkMismatch(f"data does not hash to {digest.hex()}") from None
        raise BlobStoreError(f"chunk {digest.hex()}: {exc}") from None


def _check_digest(digest: bytes) -> None:
    if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
        raise BlobStoreError(f"a chunk digest is {DIGEST_SIZE} raw bytes, got {digest!r:.80}")


_REFS_SCHEMA = (
    (
        "CREATE TABLE IF NOT EXISTS refs (task_id TEXT NOT NULL, digest BLOB NOT NULL,"
        " PRIMARY KEY (task_id, digest)) WITHOUT ROWID"
    ),
    "CREATE INDEX IF NOT EXISTS refs_by_digest ON refs (digest)",
)


def _open_refs(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        os.chmod(path, 0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > REFS_SCHEMA_VERSION:
            raise BlobStoreError(f"{path}: written by a newer peerd (schema {version})")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _REFS_SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={REFS_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


class BlockingChunkStore:
    """The chunk store's blocking core; call it from one worker thread at a time."""

    def __init__(self, root: Path, quota: int, conn: sqlite3.Connection, index: dict[bytes, _Entry]) -> None:
        self.root = root
        self.quota = quota
        self._conn = conn
        self._index = index
        self._used = sum(e.size for e in index.values())
        self.corrupt_removed = 0  # chunks found corrupt on read and deleted
        self._writer = ChunkWriter(MAX_CHUNK_SIZE)

    @classmethod
    def open(cls, root: Path, quota: int = 0) -> BlockingChunkStore:
        """Open (creating) the store at ``root``: empty ``tmp/``, index the chunks on disk."""
        if quota < 0:
            raise BlobStoreError(f"quota must be >= 0 bytes, got {quota}")
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = root / TMP_DIR
            tmp.mkdir(mode=0o700, exist_ok=True)
            for leftover in tmp.iterdir():
                leftover.unlink()  # a write that never completed
            index = _scan(root)
            conn = _open_refs(root / REFS_DB)
        except (OSError, sqlite3.Error) as exc:
            raise BlobStoreError(f"cannot open the chunk store at {root}: {exc}") from exc
        return cls(root, quota, conn, index)

    def close(self) -> None:
        self._conn.close()

    def path_of(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / name[:2] / name

    # ------------------------------------------------------------ chunks
    def has(self, digest: bytes) -> bool:
        return digest in self._index

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests (in order, without repeats) that the store does not hold."""
        return [d for d in dict.fromkeys(digests) if d not in self._index]

    def put(self, digest: bytes, data: bytes) -> bool:
        """Store a chunk; False if it was already there. ChunkMismatch, QuotaExceeded."""
        return self.put_verified(verify(digest, data))

    def put_verified(self, chunk: VerifiedChunk) -> bool:
        """Store a chunk hashed when it was made (no second hash); False if it was already there."""
        if not isinstance(chunk, VerifiedChunk):
            raise BlobStoreError(f"put_verified takes a VerifiedChunk, not {type(chunk).__name__}")
        digest, data = chunk.digest, chunk.data
        if digest in self._index:
            return False
        self._make_room(len(data))
        final = self.path_of(digest)
        tmp = self.root / TMP_DIR / f"{digest.hex()}.{secrets.token_hex(4)}.part"
        try:
            written = self._writer.write_new(tmp, data)
            if written != len(data):
                raise BlobStoreError(f"short write of chunk {digest.hex()}: {written} of {len(data)} bytes")
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # the first chunk under its ab/ directory
                final.parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(tmp, final)
            stored_ns = os.stat(final).st_mtime_ns
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BlobStoreError(f"cannot store chunk {digest.hex()}: {exc}") from exc
        self._index[digest] = _Entry(len(data), stored_ns)
        self._used += len(data)
        return True

    def get(self, digest: bytes) -> bytes | None:
        """The chunk's bytes, re-verified; None if absent (or found corrupt, and then deleted)."""
        chunk = self.get_verified(digest)
        return None if chunk is None else chunk.data

    def get_verified(self, digest: bytes) -> VerifiedChunk | None:
        """The chunk, re-hashed as it is read; None if absent (or found corrupt, and then deleted)."""
        _check_digest(digest)
        if digest not in self._index:
            return None
        path = self.path_of(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._forget(digest)
            return None
        except OSError as exc:
            raise BlobStoreError(f"cannot read chunk {digest.hex()}: {exc}") from exc
        try:
            return verify(digest, data)
        except ChunkMismatch:
            log.warning("chunk %s is corrupt on disk; deleted", digest.hex())
            self.corrupt_removed += 1
            self._remove(digest)
            return None

    def scrub(self) -> int:
        """Re-hash every chunk, deleting corrupt ones; returns how many were deleted."""
        before = self.corrupt_removed
        for digest in list(self._index):
            self.get(digest)
        return self.corrupt_removed - before

    # ------------------------------------------------------------ references
    def pin(self, task_id: str, digests: Iterable[bytes]) -> None:
        """``task_id`` references ``digests`` (present or not yet): gc keeps them."""
        rows = [(task_id, d) for d in dict.fromkeys(digests)]
        for _, digest in rows:
            _check_digest(digest)
        self._write("INSERT OR IGNORE INTO refs (task_id, digest) VALUES (?, ?)", rows)

    def release(self, task_id: str) -> None:
        """Drop every reference ``task_id`` holds (its chunks become collectable)."""
        self._write("DELETE FROM refs WHERE task_id = ?", [(task_id,)])

    def keep_only(self, task_id: str, digests: Iterable[bytes]) -> None:
        """``task_id`` references exactly ``digests`` from now on (one transaction: gc never sees a gap)."""
        keep = list(dict.fromkeys(digests))
        for digest in keep:
            _check_digest(digest)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM refs WHERE task_id = ?", (task_id,))
                self._conn.executemany("INSERT OR IGNORE INTO refs (task_id, digest) VALUES (?, ?)",
                                       [(task_id, d) for d in keep])
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BlobStoreError(f"chunk references ({self.root / REFS_DB}): {exc}") from exc

    def retain_tasks(self, task_ids: Collection[str]) -> list[str]:
        """Release every task not in ``task_ids``; returns the released ones."""
        stale = [t for t in self.tasks() if t not in task_ids]
        self._write("DELETE FROM refs WHERE task_id = ?", [(t,) for t in stale])
        return stale

    def tasks(self) -> list[str]:
        return [str(row[0]) for row in self._query("SELECT DISTINCT task_id FROM refs ORDER BY task_id", ())]

    def pinned(self, task_id: str) -> set[bytes]:
        return {_blob(row[0]) for row in self._query("SELECT digest FROM refs WHERE task_id = ?", (task_id,))}

    def refcount(self, digest: bytes) -> int:
        [(count,)] = self._query("SELECT COUNT(*) FROM refs WHERE digest = ?", (digest,))
        return count if type(count) is int else 0

    def _referenced(self) -> set[bytes]:
        return {_blob(row[0]) for row in self._query("SELECT DISTINCT digest FROM refs", ())}

    # ------------------------------------------------------------ space
    def usage(self) -> Usage:
        referenced = self._referenced()
        return Usage(
            chunks=len(self._index), bytes=self._used, quota=self.quota,
            referenced_chunks=sum(1 for d in self._index if d in referenced), tasks=len(self.tasks()),
        )

    def room(self) -> int | None:
        """Bytes new chunks may still take: the quota less the referenced chunks (gc frees the rest);
        None without a quota."""
        if not self.quota:
            return None
        referenced = self._referenced()
        return max(self.quota - sum(e.size for d, e in self._index.items() if d in referenced), 0)

    def gc(self, target: int | None = None) -> GcReport:
        """Remove unreferenced chunks, oldest first: all of them, or until at most ``target`` bytes remain."""
        referenced = self._referenced()
        victims = sorted((e.stored_ns, d) for d, e in self._index.items() if d not in referenced)
        removed = freed = 0
        for _, digest in victims:
            if target is not None and self._used <= target:
                break
            freed += self._index[digest].size
            removed += 1
            self._remove(digest)
        return GcReport(removed, freed)

    def _make_room(self, size: int) -> None:
        if not self.quota or self._used + size <= self.quota:
            return
        self.gc(target=self.quota - size)
        if self._used + size > self.quota:
            raise QuotaExceeded(self.quota, self._used, size)

    def _remove(self, digest: bytes) -> None:
        try:
            self.path_of(digest).unlink(missing_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"cannot remove chunk {digest.hex()}: {exc}") from exc
        self._forget(digest)

    def _forget(self, digest: bytes) -> None:
        entry = self._index.pop(digest, None)
        if entry is not None:
            self._used -= entry.size

    # ------------------------------------------------------------ SQLite
    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BlobStoreError(f"chunk references ({self.root / REFS_DB}): {exc}") from exc

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BlobStoreError(f"chunk references ({self.root / REFS_DB}): {exc}") from exc


def _blob(value: object) -> bytes:
    if type(value) is not bytes:
        raise BlobStoreError(f"chunk references: a digest is stored as {type(value).__name__}")
    return value


def _scan(root: Path) -> dict[bytes, _Entry]:
    """Index the chunk files; anything misplaced in a shard directory is removed."""
    index: dict[bytes, _Entry] = {}
    for shard in root.iterdir():
        if not (len(shard.name) == 2 and set(shard.name) <= _HEX and shard.is_dir()):
            continue
        for entry in os.scandir(shard):
            name = entry.name
            if len(name) == 2 * DIGEST_SIZE and set(name) <= _HEX and name[:2] == shard.name and entry.is_file(
                follow_symlinks=False
            ):
                st = entry.stat(follow_symlinks=False)
                index[bytes.fromhex(name)] = _Entry(st.st_size, st.st_mtime_ns)
            elif entry.is_dir(follow_symlinks=False):
                log.warning("ignoring the directory %s in the chunk store", entry.path)
            else:
                log.warning("removing stray %s from the chunk store", entry.path)
                os.unlink(entry.path)
    return index


class ChunkStore:
    """The async chunk store: ``BlockingChunkStore`` calls, one at a time, in a worker thread."""

    def __init__(self, files: BlockingChunkStore) -> None:
        self._files = files
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, root: Path, quota: int = 0) -> ChunkStore:
        return cls(await trio.to_thread.run_sync(BlockingChunkStore.open, root, quota))

    @property
    def root(self) -> Path:
        return self._files.root

    async def _run(self, op: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(op, limiter=self._limiter)

    async def close(self) -> None:
        await self._run(self._files.close)

    async def run_blocking(self, op: Callable[[BlockingChunkStore], T]) -> T:
        """Run ``op`` on the blocking store in its worker thread (e.g. ``manifests.import_directory``)."""
        return await self._run(partial(op, self._files))

    async def put(self, digest: bytes, data: bytes) -> bool:
        return await self._run(partial(self._files.put, digest, data))

    async def get(self, digest: bytes) -> bytes | None:
        return await self._run(partial(self._files.get, digest))

    async def put_verified(self, chunk: VerifiedChunk) -> bool:
        return await self._run(partial(self._files.put_verified, chunk))

    async def get_verified(self, digest: bytes) -> VerifiedChunk | None:
        return await self._run(partial(self._files.get_verified, digest))

    async def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        return await self._run(partial(self._files.missing, list(digests)))

    async def pin(self, task_id: str, digests: Iterable[bytes]) -> None:
        await self._run(partial(self._files.pin, task_id, list(digests)))

    async def release(self, task_id: str) -> None:
        await self._run(partial(self._files.release, task_id))

    async def tasks(self) -> list[str]:
        return await self._run(self._files.tasks)

    async def pinned(self, task_id: str) -> set[bytes]:
        return await self._run(partial(self._files.pinned, task_id))

    async def keep_only(self, task_id: str, digests: Iterable[bytes]) -> None:
        await self._run(partial(self._files.keep_only, task_id, list(digests)))

    async def room(self) -> int | None:
        return await self._run(self._files.room)

    async def retain_tasks(self, task_ids: Collection[str]) -> list[str]:
        return await self._run(partial(self._files.retain_tasks, frozenset(task_ids)))

    async def gc(self, target: int | None = None) -> GcReport:
        return await self._run(partial(self._files.gc, target))

    async def usage(self) -> Usage:
        return await self._run(self._files.usage)
