"""Collecting /out: a bounded tmpfs while the job runs, a manifest into the chunk store after it.

No dockerd here: the tmpfs and the collection are exercised on the host directly
(mounting needs root; those tests are skipped without it).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.executor.outmount import is_full, used_bytes
from peerd.executor.outputs import collect_outputs, discard_task_dir, parse_user, prepare_out_dir
from protocol.manifest import decode_manifest, manifest_id

MiB = 1 << 20
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


async def test_out_becomes_a_manifest_pinned_for_the_task(
    tmp_path: Path, store: ChunkStore, files: BlockingChunkStore
) -> None:
    out = tmp_path / "t" / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "x").write_bytes(b"x" * (MiB + 5))
    (out / "a").write_bytes(b"a")
    os.chmod(out / "a", 0o755)
    result = await collect_outputs(out, "task-1", 4 * MiB, store)
    assert result.manifest_id is not None and result.digest == result.manifest_id.hex()
    data = await store.get(result.manifest_id)
    assert data is not None and manifest_id(data) == result.manifest_id
    manifest = decode_manifest(data)
    assert [(f.path, f.mode, f.size) for f in manifest.files] == [("a", 0o755, 1), ("d/x", 0o644, MiB + 5)]
    assert result.size == MiB + 6 and not result.over_limit and not out.exists()
    for digest in manifest.digests():
        assert await store.get(digest) is not None
    assert files.pinned("task-1") == {result.manifest_id, *manifest.digests()}


async def test_links_and_fifos_are_left_out_and_listed(tmp_path: Path, store: ChunkStore) -> None:
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"host data")
    (out / "link").symlink_to(secret)
    (out / "dirlink").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    (out / "small").write_bytes(b"s" * 50)
    result = await collect_outputs(out, "task-2", 100, store)
    assert set(result.skipped) == {"link", "dirlink", "fifo"} and result.size == 50
    assert result.manifest_id is not None
    manifest = decode_manifest(await store.get(result.manifest_id) or b"")
    assert [f.path for f in manifest.files] == ["small"]


async def test_an_empty_out_gives_no_manifest(tmp_path: Path, store: ChunkStore, files: BlockingChunkStore) -> None:
    (tmp_path / "out").mkdir()
    result = await collect_outputs(tmp_path / "out", "task-3", 100, store)
    assert (result.manifest_id, result.digest, result.size) == (None, "", 0)
    assert files.pinned("task-3") == set()


async def test_an_unbounded_out_over_the_limit_is_refused_at_collection(
    tmp_path: Path, store: ChunkStore, files: BlockingChunkStore
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "big").write_bytes(b"b" * 120)
    result = await collect_outputs(out, "task-4", 100, store)
    assert result.over_limit and result.manifest_id is None and files.pinned("task-4") == set()
    out.mkdir()  # collected and removed: again, one byte against a limit of 0
    (out / "big").write_bytes(b"b")
    zero = await collect_outputs(out, "task-4", 0, store)
    assert zero.over_limit and zero.manifest_id is None


async def test_without_a_store_outputs_are_described_not_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_bytes(b"1")
    result = await collect_outputs(out, "task-5", 10, None)
    assert result.manifest_id is not None and result.size == 1 and not out.exists()


def test_the_out_dir_is_fresh_and_the_jobs_own(tmp_path: Path) -> None:
    out = tmp_path / "task" / "out"
    out.mkdir(parents=True)
    (out / "stale").write_text("old attempt")
    bounded = prepare_out_dir(out, "65534:65534", MiB)
    try:
        assert list(out.iterdir()) == []
        st = out.stat()
        if os.geteuid() == 0:
            assert bounded and os.path.ismount(out)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o700)
        else:  # cannot mount nor give it away: a plain world-writable directory
            assert not bounded and stat.S_IMODE(st.st_mode) == 0o777
        bounded = prepare_out_dir(out, None, MiB)  # again: the old mount goes first
        assert stat.S_IMODE(out.stat().st_mode) == 0o777
    finally:
        discard_task_dir(out.parent)
    assert not out.parent.exists()


@root_only
def test_the_tmpfs_refuses_writes_past_the_limit(tmp_path: Path) -> None:
    out = tmp_path / "task" / "out"
    assert prepare_out_dir(out, None, 2 * MiB)
    try:
        with open(out / "f", "wb") as fh:
            fh.write(b"x" * MiB)
            fh.flush()
            assert not is_full(out)
            with pytest.raises(OSError) as refused:
                fh.write(b"y" * (2 * MiB))
                fh.flush()
        assert refused.value.errno == errno.ENOSPC
        assert is_full(out) and used_bytes(out) == 2 * MiB
    finally:
        discard_task_dir(out.parent)
    assert not out.parent.exists()


@root_only
def test_an_output_limit_of_zero_is_a_read_only_out(tmp_path: Path) -> None:
    out = tmp_path / "task" / "out"
    assert prepare_out_dir(out, None, 0)
    try:
        with pytest.raises(OSError) as refused:
            (out / "f").write_bytes(b"z")
        assert refused.value.errno == errno.EROFS and not is_full(out)
    finally:
        discard_task_dir(out.parent)


@root_only
async def test_a_full_tmpfs_is_reported_over_the_limit_and_unmounted(tmp_path: Path, store: ChunkStore) -> None:
    out = tmp_path / "task" / "out"
    assert prepare_out_dir(out, None, MiB)
    with pytest.raises(OSError):
        (out / "f").write_bytes(b"z" * (2 * MiB))
    result = await collect_outputs(out, "task-6", MiB, store)
    assert result.over_limit and result.size == MiB and result.manifest_id is not None
    assert not os.path.ismount(out) and not out.exists()


def test_parse_user() -> None:
    assert parse_user("65534:65534") == (65534, 65534)
    assert parse_user("1000") == (1000, None)
    assert parse_user("nobody") == (None, None) and parse_user(None) == (None, None)
