"""A daemon crash (the executor dropped without cleanup) and the next start's recovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from peerd.executor import CapacityLedger, DockerExecutor, RunOutcomeState, RunSpec
from peerd.host.nvml import FakeNvml
from tests.executor.helpers import MiB, inspect_raw, job, new_node_id, sweep, wait_exit_raw

pytestmark = pytest.mark.docker  # needs a real dockerd

GATED = ("echo before", "while [ ! -e /out/go ]; do sleep 0.05; done", "echo after")


async def crash_after_starting(node_id: str, workdir: Path, *specs: RunSpec) -> None:
    """Start jobs on an executor, then drop it like a SIGKILL would: no stop, no cleanup."""
    async with trio.open_nursery() as nursery:
        doomed = DockerExecutor(node_id, workdir)
        await nursery.start(doomed.run)
        for spec in specs:
            await doomed.start(spec)
        nursery.cancel_scope.cancel()


async def test_tracked_job_is_reattached_and_the_ledger_rebuilt(
    nursery: trio.Nursery, node_id: str, workdir: Path
) -> None:
    gpus = FakeNvml.identical(2).read()
    before = CapacityLedger(cpus=2, memory=1024 * MiB, gpus=gpus)
    before.reserve("long-1", cpus=1, memory=64 * MiB, now=0, hold_until=5)
    before.confirm("long-1", now=1)
    before.reserve("gpu-1", cpus=0.5, memory=64 * MiB, gpu_count=2, now=1, hold_until=6)  # held at the crash
    await crash_after_starting(node_id, workdir, job("long-1", *GATED))

    reborn = DockerExecutor(node_id, workdir)
    await nursery.start(reborn.run)
    report = await reborn.recover({"long-1"})
    assert report.reattached == ("long-1",) and report.removed == () and report.finished == ()

    owned = await reborn.list_owned()
    after = CapacityLedger.rebuild(cpus=2, memory=1024 * MiB, gpus=gpus, live=owned)
    assert [r.task_id for r in after.reservations()] == ["long-1"]
    assert after.free().gpus == tuple(gpus) and after.free().cpus == 1.0

    (workdir / "long-1" / "out" / "go").touch()
    with trio.fail_after(10):
        outcome = await reborn.wait("long-1")
    assert outcome.state is RunOutcomeState.SUCCEEDED
    assert outcome.stdout == b"before\nafter\n"  # output from before the crash too
    assert await reborn.list_owned() == []
    after.release("long-1")
    assert after.free().cpus == 2 and len(after.free().gpus) == 2


async def test_untracked_containers_are_removed_and_other_nodes_untouched(
    nursery: trio.Nursery, node_id: str, workdir: Path
) -> None:
    neighbour_id = new_node_id()
    try:
        neighbour = DockerExecutor(neighbour_id, workdir / "neighbour")
        await nursery.start(neighbour.run)
        await neighbour.start(job("theirs-1", "sleep 60"))
        await crash_after_starting(node_id, workdir / "mine", job("mine-1", "sleep 60"))

        reborn = DockerExecutor(node_id, workdir / "mine")
        await nursery.start(reborn.run)
        report = await reborn.recover(set())
        assert report.removed == ("mine-1",) and report.reattached == ()
        assert await reborn.list_owned() == []
        assert not (workdir / "mine" / "mine-1").exists()  # its out dir went with it

        theirs = await neighbour.inspect("theirs-1")
        assert theirs is not None and theirs.state == "running"
        assert [i.task_id for i in await neighbour.list_owned()] == ["theirs-1"]
        await neighbour.stop("theirs-1", "test over")
        assert (await neighbour.wait("theirs-1")).state is RunOutcomeState.CANCELLED
    finally:
        sweep(neighbour_id)


async def test_jobs_that_ended_while_down_are_finished_and_missing_ones_lost(
    nursery: trio.Nursery, node_id: str, workdir: Path
) -> None:
    await crash_after_starting(node_id, workdir, job("quick-1", "echo hi; echo bye >&2; echo x > /out/f; exit 4"))
    container = inspect_raw(f"peerd-{node_id}-quick-1")["Id"]
    assert await trio.to_thread.run_sync(wait_exit_raw, container) == 4

    reborn = DockerExecutor(node_id, workdir)
    await nursery.start(reborn.run)
    report = await reborn.recover({"quick-1", "vanished-1"})
    assert report.reattached == () and report.removed == ()
    outcomes = {o.task_id: o for o in report.finished}
    quick, vanished = outcomes["quick-1"], outcomes["vanished-1"]
    assert (quick.state, quick.exit_code, quick.stdout, quick.stderr) == (RunOutcomeState.FAILED, 4, b"hi\n", b"bye\n")
    assert quick.output_manifest is not None and quick.output_size == 2
    assert vanished.state is RunOutcomeState.LOST and vanished.exit_code is None
    assert await reborn.list_owned() == []


async def test_a_reattached_job_past_its_deadline_times_out(
    nursery: trio.Nursery, node_id: str, workdir: Path
) -> None:
    await crash_after_starting(node_id, workdir, job("late-1", "sleep 60", timeout=0.2))
    reborn = DockerExecutor(node_id, workdir, stop_grace=0)
    await nursery.start(reborn.run)
    await reborn.recover({"late-1"})
    with trio.fail_after(10):
        outcome = await reborn.wait("late-1")
    assert outcome.state is RunOutcomeState.TIMEOUT
