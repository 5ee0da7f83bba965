"""peerd.data.blobstore against a real directory and SQLite file, including SIGKILL mid-write."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peerd.data.blobstore import (
    REFS_DB,
    TMP_DIR,
    BlobStoreError,
    BlockingChunkStore,
    ChunkMismatch,
    ChunkStore,
    QuotaExceeded,
)
from peerd.data.manifests import ManifestBuildError, build_manifest, import_directory
from protocol.manifest import MIN_CHUNK_SIZE, decode_manifest

ROOT = Path(__file__).resolve().parents[2]


def chunk(i: int, size: int = 1000) -> tuple[bytes, bytes]:
    data = i.to_bytes(4, "big") * (size // 4)
    return hashlib.sha256(data).digest(), data


@pytest.fixture
def store(tmp_path: Path) -> BlockingChunkStore:
    return BlockingChunkStore.open(tmp_path / "blobs")


def test_put_get_and_dedupe(store: BlockingChunkStore) -> None:
    digest, data = chunk(1)
    assert store.put(digest, data) is True
    assert store.put(digest, data) is False
    assert store.get(digest) == data and store.has(digest)
    path = store.path_of(digest)
    assert path.parent.name == digest.hex()[:2] and path.read_bytes() == data
    assert store.get(chunk(2)[0]) is None
    assert store.missing([chunk(2)[0], digest, chunk(2)[0]]) == [chunk(2)[0]]
    assert not list((store.root / TMP_DIR).iterdir())


def test_data_that_does_not_match_its_digest_is_never_stored(store: BlockingChunkStore) -> None:
    digest, data = chunk(1)
    with pytest.raises(ChunkMismatch):
        store.put(digest, data + b"x")
    assert not store.has(digest) and not store.path_of(digest).exists()
    with pytest.raises(BlobStoreError):
        store.put(b"short", b"")


def test_a_chunk_corrupted_on_disk_is_deleted_not_served(store: BlockingChunkStore) -> None:
    digest, data = chunk(1)
    store.put(digest, data)
    path = store.path_of(digest)
    path.chmod(0o600)
    path.write_bytes(b"X" + data[1:])
    assert store.get(digest) is None
    assert not path.exists() and not store.has(digest) and store.corrupt_removed == 1
    assert store.usage().bytes == 0


def test_reopening_indexes_chunks_sweeps_temp_files_and_strays(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    first = BlockingChunkStore.open(root)
    digest, data = chunk(1)
    first.put(digest, data)
    first.pin("task", [digest])
    first.close()
    (root / TMP_DIR / "half.part").write_bytes(b"half a chunk")
    (root / digest.hex()[:2] / "not-a-digest").write_bytes(b"?")
    again = BlockingChunkStore.open(root)
    assert not list((root / TMP_DIR).iterdir())
    assert not (root / digest.hex()[:2] / "not-a-digest").exists()
    assert again.get(digest) == data and again.pinned("task") == {digest}
    assert again.usage().bytes == len(data) and (root / REFS_DB).stat().st_mode & 0o077 == 0


def test_pins_refcounts_release_and_retain(store: BlockingChunkStore) -> None:
    a, b, c = (chunk(i)[0] for i in range(3))
    store.pin("t1", [a, b, a])
    store.pin("t2", [b, c])
    assert store.refcount(a) == 1 and store.refcount(b) == 2 and store.refcount(c) == 1
    assert store.tasks() == ["t1", "t2"]
    store.release("t1")
    assert store.refcount(a) == 0 and store.refcount(b) == 1
    assert store.retain_tasks({"t3"}) == ["t2"]
    assert store.tasks() == [] and store.refcount(b) == 0


def test_gc_removes_only_unreferenced_chunks_oldest_first(store: BlockingChunkStore) -> None:
    digests = []
    for i in range(4):
        digest, data = chunk(i)
        store.put(digest, data)
        os.utime(store.path_of(digest), ns=(i * 10**9, i * 10**9))
        digests.append(digest)
    reopened = BlockingChunkStore.open(store.root)  # picks up the mtimes
    reopened.pin("t", [digests[0]])
    report = reopened.gc(target=2 * 1000)
    assert (report.removed, report.freed) == (2, 2000)
    assert [reopened.has(d) for d in digests] == [True, False, False, True]  # 1 and 2 were the oldest free
    assert reopened.gc().removed == 1 and reopened.has(digests[0])


def test_quota_evicts_unreferenced_chunks_then_refuses(tmp_path: Path) -> None:
    store = BlockingChunkStore.open(tmp_path / "blobs", quota=2500)
    (d1, c1), (d2, c2), (d3, c3) = chunk(1), chunk(2), chunk(3)
    store.pin("t", [d1, d2, d3])
    store.put(d1, c1)
    store.put(d2, c2)
    with pytest.raises(QuotaExceeded) as info:
        store.put(d3, c3)
    assert info.value.quota == 2500 and "storage.blob_quota" in str(info.value)
    assert not store.has(d3) and store.usage().bytes == 2000
    store.release("t")
    assert store.put(d3, c3) and store.usage().bytes == 2000  # one unreferenced chunk made room
    assert not store.has(d1) and store.has(d2)  # the oldest went


async def test_the_async_adapter_runs_the_same_calls(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "blobs", quota=0)
    digest, data = chunk(7)
    await store.pin("t", [digest])
    assert await store.missing([digest]) == [digest]
    assert await store.put(digest, data)
    assert await store.get(digest) == data
    usage = await store.usage()
    assert (usage.chunks, usage.bytes, usage.referenced_chunks, usage.tasks) == (1, 1000, 1, 1)
    await store.release("t")
    assert (await store.gc()).removed == 1
    assert await store.retain_tasks([]) == []
    await store.close()


# ---------------------------------------------------------------- builder
def test_a_directory_becomes_a_manifest_and_stored_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello")
    (src / "d" / "e" / "big").write_bytes(os.urandom(MIN_CHUNK_SIZE * 2 + 5))
    (src / "empty").write_bytes(b"")
    (src / "a.txt").chmod(0o4755)  # setuid is dropped, never carried
    store = BlockingChunkStore.open(tmp_path / "blobs")
    mid, manifest = import_directory(src, store, "t", chunk_size=MIN_CHUNK_SIZE)
    assert [(f.path, f.size, len(f.chunks)) for f in manifest.files] == [
        ("a.txt", 5, 1), ("d/e/big", MIN_CHUNK_SIZE * 2 + 5, 3), ("empty", 0, 0)
    ]
    assert manifest.files[0].mode == 0o755
    assert decode_manifest(store.get(mid) or b"") == manifest
    assert store.missing(manifest.digests()) == [] and store.pinned("t") == {mid, *manifest.digests()}
    big = b"".join(store.get(d) or b"" for d in manifest.files[1].chunks)
    assert big == (src / "d" / "e" / "big").read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dangling"])
def test_links_and_special_files_are_refused_by_the_builder(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"x")
    if kind == "symlink":
        (src / "link").symlink_to(src / "ok")
    elif kind == "fifo":
        os.mkfifo(src / "pipe")
    else:
        (src / "link").symlink_to("/etc/passwd-does-not-exist")
    with pytest.raises(ManifestBuildError):
        build_manifest(src)


# ---------------------------------------------------------------- SIGKILL
WRITER = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    from peerd.data.blobstore import BlockingChunkStore

    def task_chunks(t):
        return [hashlib.sha256(f"{t}:{i}".encode()).digest() * (2 << 15) for i in range(4)]

    if sys.argv[3] == "pause-in-fsync":  # stop inside the 3rd chunk write, until killed
        real_fsync, calls = os.fsync, []
        def fsync(fd):
            calls.append(fd)
            if len(calls) == 3:
                print("fsync", flush=True)
                sys.stdin.readline()
            real_fsync(fd)
        os.fsync = fsync
    store = BlockingChunkStore.open(Path(sys.argv[1]))
    t = int(sys.argv[2])
    while True:
        datas = task_chunks(t)
        store.pin(f"task{t}", [hashlib.sha256(d).digest() for d in datas])
        for data in datas:
            store.put(hashlib.sha256(data).digest(), data)
            print(t, flush=True)
        if t % 2 == 0:
            store.release(f"task{t}")
        if t % 3 == 0:
            store.gc()
        t += 1
    """
)


def expected_pins(task: str) -> set[bytes]:
    t = int(task.removeprefix("task"))
    return {hashlib.sha256(hashlib.sha256(f"{t}:{i}".encode()).digest() * (2 << 15)).digest() for i in range(4)}


def test_sigkill_mid_write_leaves_no_corrupt_chunk_and_no_partial_pins(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = 0
    for round_, how in enumerate(["pause-in-fsync", "free", "free", "free"]):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(start), how],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert writer.stdout is not None
        last = str(start)
        if how == "pause-in-fsync":  # deterministic: killed between write and rename
            while (line := writer.stdout.readline()) != "fsync\n":
                assert line, "the writer died on its own"
                last = line
            [part] = (root / TMP_DIR).iterdir()
            assert part.name.endswith(".part")
        else:  # killed wherever it happens to be, at a different point each round
            for _ in range(6 + round_ * 3):
                last = writer.stdout.readline()
                assert last, "the writer died on its own"
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        start = int(last) + 1

        store = BlockingChunkStore.open(root)
        assert not list((root / TMP_DIR).iterdir())  # a half-written temp file is swept, never indexed
        assert store.scrub() == 0  # every chunk under its final name verifies
        for shard in root.iterdir():
            if shard.is_dir() and shard.name != TMP_DIR:
                for path in shard.iterdir():
                    assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        for task in store.tasks():  # a pin is all of a task's digests or none
            assert store.pinned(task) == expected_pins(task), task
        store.close()
    store = BlockingChunkStore.open(root)
    assert store.tasks(), "the writer pinned nothing before the kills"
    assert store.retain_tasks(set()) and store.tasks() == []
    store.gc()
    assert store.usage().chunks == 0 and store.usage().bytes == 0
