"""Job data on the real dockerd: read-only inputs staged from the chunk store, /out bounded while
the job runs (stopped at the output limit), /out back as a manifest in the chunk store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.data.manifests import import_directory
from peerd.data.staging import materialize
from peerd.executor import DockerExecutor, InputMount, Reason, RunOutcomeState
from tests.executor.helpers import MiB, job, output_files

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="a bounded /out needs the tmpfs mount (root)"),
]


async def staged_input(tmp_path: Path, files: BlockingChunkStore, data: bytes) -> Path:
    """``data`` as in.bin, imported into the store and written back out by staging (the provider's path)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "in.bin").write_bytes(data)
    _, manifest = import_directory(src, files, "inputs")
    dest = tmp_path / "staged"
    dest.mkdir()
    await materialize(manifest, ChunkStore(files), dest)
    return dest


async def test_a_job_reads_its_read_only_input_and_writes_a_checksum(
    executor: DockerExecutor, tmp_path: Path, files: BlockingChunkStore
) -> None:
    data = os.urandom(3 * MiB + 11)
    staged = await staged_input(tmp_path, files, data)
    spec = job("sum-1", "sha256sum /data/in.bin | cut -d' ' -f1 > /out/sum", inputs=(InputMount(staged, "/data"),))
    with trio.fail_after(30):
        outcome = await executor.run_job(spec)
    assert outcome.state is RunOutcomeState.SUCCEEDED, outcome.detail
    assert output_files(files, outcome) == {"sum": hashlib.sha256(data).hexdigest().encode() + b"\n"}


async def test_writing_into_an_input_mount_fails(
    executor: DockerExecutor, tmp_path: Path, files: BlockingChunkStore
) -> None:
    staged = await staged_input(tmp_path, files, b"original")
    spec = job("ro-1", "echo x > /data/new; echo y > /data/in.bin; rm /data/in.bin", user="0:0",
               inputs=(InputMount(staged, "/data"),))
    with trio.fail_after(30):
        outcome = await executor.run_job(spec)
    assert outcome.state is RunOutcomeState.FAILED and b"Read-only file system" in outcome.stderr
    assert sorted(p.name for p in staged.iterdir()) == ["in.bin"] and (staged / "in.bin").read_bytes() == b"original"


async def test_a_job_writing_past_its_output_limit_is_stopped_and_bounded(
    nursery: trio.Nursery, node_id: str, workdir: Path, store: ChunkStore, files: BlockingChunkStore
) -> None:
    limit = 8 * MiB
    ex = DockerExecutor(node_id, workdir, stop_grace=1, output_limit=limit, store=store)
    await nursery.start(ex.run)
    # 12 MiB in 1 MiB writes (dd stops at ENOSPC), then the job would idle: only the watcher ends it
    spec = job("fill-1", "dd if=/dev/zero of=/out/big bs=1M count=12", "exec sleep 600", timeout=60.0)
    out_dir = workdir / "fill-1" / "out"
    with trio.fail_after(30):
        await ex.start(spec)
        capacity = os.statvfs(out_dir)
        outcome = await ex.wait("fill-1")
    assert capacity.f_blocks * capacity.f_frsize == limit  # the kernel's bound, set before the job ran
    assert outcome.state is RunOutcomeState.FAILED and outcome.reason is Reason.OUTPUT_LIMIT
    assert outcome.detail.startswith("output_limit") and outcome.wall_time < 20
    written = output_files(files, outcome)
    assert list(written) == ["big"] and len(written["big"]) == outcome.output_size
    assert limit - MiB <= outcome.output_size <= limit  # dd wrote until the kernel's bound, not past it
    assert set(written["big"]) == {0}
    assert files.usage().bytes <= limit + MiB  # the chunks the store keeps for it (plus its manifest)
    assert not out_dir.exists()
