"""Job data on both sides, fast: real chunk stores and SQLite on tmp dirs, blob streams in memory.

The provider's ``ProviderData`` stages inputs that a requester store serves
through ``serve_blobs`` over an in-memory stream pair; ``RequesterData``
imports inputs, drops their pins when the task is final and, after a
restart, for the tasks a crash left pinned; ``OutputRetention`` releases a
finished task's pins only once ``retention`` has passed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.data.jobdata import DataSettings, OutputRetention, ProviderData, StagingFailed
from peerd.data.manifests import import_directory
from peerd.data.requestdata import InputSource, RequesterData
from peerd.data.transfer import serve_blobs
from peerd.executor.contract import RunSpec
from peerd.jobs.tracking import TaskTracker
from peerd.state.store import ResultRecord, Store, TaskRecord, TaskRole
from protocol.messages import InputRef, JobSpec, LeaseTerms, Result, TaskState

REQUESTER, PROVIDER = "12D3KooWrequester", "12D3KooWprovider"
NOW = 1_800_000_000.0
T = TypeVar("T")


class MemoryStream:
    """One end of an in-memory byte stream with the p2p wrapper's interface."""

    def __init__(self, stream: trio.StapledStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, *, timeout: float | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def close(self) -> None:
        await self._stream.aclose()

    async def reset(self) -> None:
        await self._stream.aclose()


class Opener:
    """``OpenStream`` to a requester store served in ``nursery``; ``opened`` counts streams."""

    def __init__(self, nursery: trio.Nursery, served: ChunkStore, *, answer: bool = True) -> None:
        self.nursery, self.served, self.answer = nursery, served, answer
        self.opened = 0
        self.first = trio.Event()

    async def __call__(self, peer: str) -> MemoryStream:
        self.opened += 1
        self.first.set()
        ours, theirs = trio.testing.memory_stream_pair()
        if self.answer:
            self.nursery.start_soon(self._serve, MemoryStream(theirs))
        else:
            self.nursery.start_soon(theirs.receive_some)  # a peer that never answers
        return MemoryStream(ours)

    async def _serve(self, stream: MemoryStream) -> None:
        async def allow(peer: str, task_id: str) -> bool:
            return True

        await serve_blobs(stream, PROVIDER, self.served, allow)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[ChunkStore, ChunkStore]]:
    """(requester's store, provider's store), the provider's with a 64 MiB quota."""
    theirs = await ChunkStore.open(tmp_path / "req-blobs")
    ours = await ChunkStore.open(tmp_path / "prov-blobs", 64 << 20)
    yield theirs, ours
    await theirs.close()
    await ours.close()


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "state.db") as store:
        yield store


def make_input(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "small.txt").write_bytes(b"hello\n")
    return root


def terms_for(task_id: str, refs: tuple[InputRef, ...], *, grace: float = 60.0) -> LeaseTerms:
    spec = JobSpec(image="peerd-test/busybox:1", command=("true",), env={}, cpus=1.0, memory=64 << 20, gpus=0,
                   timeout=30.0, max_price=1.0, inputs=refs)
    return LeaseTerms(task_id=task_id, requester=REQUESTER, provider=PROVIDER, spec=spec, price=1.0, gpus=(),
                      issued_at=time.time(), expires_at=time.time() + 30.0 + grace)


def run_spec(task_id: str) -> RunSpec:
    return RunSpec(task_id=task_id, image="peerd-test/busybox:1", cpus=1.0, memory=64 << 20, timeout=30.0)


async def imported(theirs: ChunkStore, state: Store, task_id: str, source: Path) -> tuple[InputRef, ...]:
    requester = RequesterData(theirs, state, open_stream=_never)
    return await requester.import_inputs(task_id, [InputSource(source, "/inputs/data")])


async def _never(peer: str) -> MemoryStream:
    raise AssertionError("the requester fetched nothing here")


async def test_staging_fetches_writes_and_mounts_the_inputs_once(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    theirs, ours = stores
    source = make_input(tmp_path / "input")
    refs = await imported(theirs, state, "t1", source)
    async with trio.open_nursery() as nursery:
        opener = Opener(nursery, theirs)
        data = ProviderData(ours, opener, DataSettings(staging_dir=tmp_path / "staging"))
        spec = await data.stage(terms_for("t1", refs), run_spec("t1"))
        [mount] = spec.inputs
        assert mount.target == "/inputs/data"
        assert (mount.source / "d" / "big.bin").read_bytes() == (source / "d" / "big.bin").read_bytes()
        assert (mount.source / "small.txt").read_bytes() == b"hello\n"
        first = data.bytes_fetched
        assert first >= 3 << 20

        # the same input for another task: every chunk is there already
        refs2 = await imported(theirs, state, "t2", source)
        await data.stage(terms_for("t2", refs2), run_spec("t2"))
        assert data.bytes_fetched == first
        nursery.cancel_scope.cancel()

    # finished without outputs: nothing stays pinned, the staged copy goes
    assert await ours.pinned("t1")
    await data.finished("t1", "")
    assert await ours.pinned("t1") == set()
    assert not data.task_dir("t1").exists() and data.task_dir("t2").exists()


async def test_a_size_the_lease_does_not_declare_fails_staging(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    theirs, ours = stores
    [ref] = await imported(theirs, state, "t1", make_input(tmp_path / "input"))
    lying = InputRef(manifest=ref.manifest, dest=ref.dest, size=ref.size - 1, file=False)
    async with trio.open_nursery() as nursery:
        data = ProviderData(ours, Opener(nursery, theirs), DataSettings(staging_dir=tmp_path / "staging"))
        with pytest.raises(StagingFailed, match="the lease says"):
            await data.stage(terms_for("t1", (lying,)), run_spec("t1"))
        nursery.cancel_scope.cancel()


async def test_staging_past_the_leases_grace_fails_and_a_cancel_ends_it(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    theirs, ours = stores
    refs = await imported(theirs, state, "t1", make_input(tmp_path / "input"))
    async with trio.open_nursery() as nursery:
        silent = Opener(nursery, theirs, answer=False)
        data = ProviderData(ours, silent, DataSettings(staging_dir=tmp_path / "staging"))
        with pytest.raises(StagingFailed, match="grace"):  # no grace left: the job keeps its full run time
            await data.stage(terms_for("t1", refs, grace=0.0), run_spec("t1"))

        with trio.CancelScope() as scope:  # what JobRunner.cancel does while a job stages
            async with trio.open_nursery() as inner:
                inner.start_soon(data.stage, terms_for("t2", refs), run_spec("t2"))
                await silent.first.wait()  # the fetch has begun (its pins are in)
                scope.cancel()
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
    assert await ours.pinned("t2")  # pinned before the fetch began
    await data.finished("t2", "")
    assert await ours.pinned("t2") == set() and not data.task_dir("t2").exists()


async def test_outputs_stay_pinned_and_recovery_removes_leftover_copies(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore],
) -> None:
    _, ours = stores
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_bytes(b"42\n")
    mid, manifest = await ours.run_blocking(lambda files: import_directory(out, files, "t1"))
    await ours.pin("t1", [bytes(32)])  # an input chunk the job used
    data = ProviderData(ours, _never, DataSettings(staging_dir=tmp_path / "staging"))
    await data.finished("t1", "sha256:" + mid.hex())
    assert await ours.pinned("t1") == {mid, *manifest.digests()}

    for task in ("crashed", "running"):
        (data.task_dir(task) / "0").mkdir(parents=True)
    (tmp_path / "staging" / "a-file").write_bytes(b"")
    assert await data.recover(live=["running"]) == ["crashed"]
    assert not data.task_dir("crashed").exists() and data.task_dir("running").is_dir()
    assert await ProviderData(ours, _never, DataSettings(staging_dir=tmp_path / "nowhere")).recover([]) == []


async def test_room_is_the_quota_less_what_other_tasks_pin(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    theirs, ours = stores
    data = ProviderData(ours, _never, DataSettings(staging_dir=tmp_path / "staging"))
    chunk = os.urandom(1 << 20)
    digest = hashlib.sha256(chunk).digest()
    await ours.put(digest, chunk)
    assert await data.room() == 64 << 20  # unpinned: gc would free it
    await ours.pin("other", [digest])
    assert await data.room() == 63 << 20
    refs = await imported(theirs, state, "t1", make_input(tmp_path / "input"))
    big = terms_for("t1", (InputRef(manifest=refs[0].manifest, dest="/i", size=63 << 20, file=False),)).spec
    assert await data.room_refusal(big) is None
    bigger = terms_for("t1", (InputRef(manifest=refs[0].manifest, dest="/i", size=(63 << 20) + 1,
                                       file=False),)).spec
    assert "room for 66060288 bytes" in str(await data.room_refusal(bigger))
    unlimited = ProviderData(theirs, _never, DataSettings(staging_dir=tmp_path / "staging"))
    assert await unlimited.room() > 0


async def test_keep_only_replaces_a_tasks_pins_at_once(tmp_path: Path) -> None:
    files = BlockingChunkStore.open(tmp_path / "blobs")
    try:
        a, b, c = (bytes([i]) * 32 for i in range(3))
        files.pin("t", [a, b])
        files.pin("u", [b])
        files.keep_only("t", [c, c])
        assert files.pinned("t") == {c} and files.pinned("u") == {b}
        files.keep_only("t", [])
        assert files.tasks() == ["u"]
    finally:
        files.close()


def requester_record(task_id: str, state: TaskState) -> TaskRecord:
    spec = JobSpec(image="peerd-test/busybox:1", command=("true",), env={}, cpus=1.0, memory=64 << 20, gpus=0,
                   timeout=30.0, max_price=1.0)
    return TaskRecord(task_id=task_id, role=TaskRole.REQUESTER, state=state, spec=spec, requester=REQUESTER,
                      created_at=NOW, updated_at=NOW)


async def test_requester_pins_go_when_final_and_after_a_restart(
    tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    theirs, _ = stores
    source = make_input(tmp_path / "input")
    for task_id, task_state in (("done", TaskState.FAILED), ("live", TaskState.RUNNING)):
        await state.create_task(requester_record(task_id, task_state))
        await imported(theirs, state, task_id, source)
    await theirs.pin("provider-task", [bytes(32)])  # another role's pins are not the requester's
    requester = RequesterData(theirs, state, _never)
    tracker = TaskTracker()
    tracker.open("live")
    async with trio.open_nursery() as nursery:
        await nursery.start(requester.recover, tracker)
        assert await theirs.tasks() == ["live", "provider-task"]  # the final task's inputs went at once
        tracker.finish("live", TaskState.SUCCEEDED, "done")
    assert await theirs.tasks() == ["provider-task"]


async def test_a_failed_import_pins_nothing(tmp_path: Path, stores: tuple[ChunkStore, ChunkStore],
                                            state: Store) -> None:
    theirs, _ = stores
    requester = RequesterData(theirs, state, _never)
    with pytest.raises(Exception, match="no-such"):
        await requester.import_inputs("t1", [InputSource(make_input(tmp_path / "in"), "/a"),
                                             InputSource(tmp_path / "no-such", "/b")])
    assert await theirs.tasks() == []



async def test_a_cancelled_import_pins_nothing(tmp_path: Path, stores: tuple[ChunkStore, ChunkStore], state: Store,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    theirs, _ = stores
    requester = RequesterData(theirs, state, _never)
    imports: list[object] = []
    run_blocking = theirs.run_blocking

    async def cancelling_the_second(op: Callable[[BlockingChunkStore], T]) -> T:
        imports.append(op)
        if len(imports) == 2:
            scope.cancel()  # the first input is imported (and pinned) by now
        return await run_blocking(op)

    monkeypatch.setattr(theirs, "run_blocking", cancelling_the_second)
    with trio.CancelScope() as scope:
        await requester.import_inputs("t1", [InputSource(make_input(tmp_path / "a"), "/a"),
                                             InputSource(make_input(tmp_path / "b"), "/b")])
    assert scope.cancelled_caught and len(imports) == 2
    assert await theirs.tasks() == []

async def test_output_retention_releases_only_finished_tasks_past_retention(
    stores: tuple[ChunkStore, ChunkStore], state: Store,
) -> None:
    _, ours = stores
    clock = [NOW]
    for task_id, finished_at in (("old", NOW - 100), ("young", NOW - 10), ("active", NOW - 100)):
        await state.create_task(requester_record(task_id, TaskState.SUCCEEDED))
        await state.put_result(ResultRecord(Result(task_id=task_id, state=TaskState.SUCCEEDED, exit_code=0,
                                                   stdout=b"", stderr=b"", output_digest="", output_size=0,
                                                   wall_time=1.0, gpu_seconds=0.0, detail=""), finished_at=finished_at))
        await ours.pin(task_id, [bytes(32)])
    await ours.pin("no-result", [bytes(32)])
    retention = OutputRetention(ours, state, 50.0, active=lambda: ["active"], clock=lambda: clock[0])
    assert await retention.sweep() == ["old"]
    clock[0] += 40
    assert await retention.sweep() == ["young"]
    assert await ours.tasks() == ["active", "no-result"] and retention.released == 2
