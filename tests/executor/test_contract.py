"""The Executor contract, checked the same way on the fake and on the real DockerExecutor.

Each case describes a job by what it does (output, exit code, runs until
stopped); a driver turns that into a busybox command for dockerd or a script
for the fake. The docker variant needs a dockerd (marked ``docker``); the fake
variant runs anywhere, and is what the fast provider and requester tests use.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from peerd.executor.contract import Executor, LogChunk, RunOutcomeState, RunSpec
from peerd.executor.errors import ExecutorError, Reason, UnknownTask
from tests.fakes.executor import FakeExecutor, FakeHost, Script

MiB = 1 << 20


@dataclass
class Driver:
    """Opens executors on one node (a restart opens a new one on the same host) and describes jobs."""

    node_id: str
    open: Callable[[], AbstractAsyncContextManager[Executor]]
    describe: Callable[[str, bytes, bytes, int, bool, float], RunSpec]
    filling: Callable[[str], RunSpec]  # a job that writes past the output limit, then idles
    created: list[str] = field(default_factory=list)

    def job(self, task_id: str, *, stdout: bytes = b"", stderr: bytes = b"", exit_code: int = 0,
            hold: bool = False, timeout: float = 30.0) -> RunSpec:
        return self.describe(task_id, stdout, stderr, exit_code, hold, timeout)


def _fake_driver(tmp_path: Path) -> Driver:
    host = FakeHost()

    @asynccontextmanager
    async def open_executor() -> AsyncIterator[Executor]:
        executor = FakeExecutor("fakenode", host)
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.run)
            yield executor
            nursery.cancel_scope.cancel()

    def describe(task_id: str, stdout: bytes, stderr: bytes, code: int, hold: bool, timeout: float) -> RunSpec:
        image = f"fake/{task_id}"
        output = tuple((s, d) for s, d in (("stdout", stdout), ("stderr", stderr)) if d)
        host.scripts[image] = Script(exit_code=code, output=output, hold=hold)
        return RunSpec(task_id=task_id, image=image, cpus=1.0, memory=64 * MiB, timeout=timeout)

    def filling(task_id: str) -> RunSpec:
        host.scripts[f"fake/{task_id}"] = Script(hold=True, output_limit=True)
        return RunSpec(task_id=task_id, image=f"fake/{task_id}", cpus=1.0, memory=64 * MiB, timeout=30.0)

    return Driver("fakenode", open_executor, describe, filling)


def _docker_driver(tmp_path: Path, node_id: str) -> Driver:
    from peerd.executor.docker import DockerExecutor
    from tests.executor.helpers import job

    @asynccontextmanager
    async def open_executor() -> AsyncIterator[Executor]:
        executor = DockerExecutor(node_id, tmp_path / "work", stop_grace=1, pull_timeout=10, output_limit=4 * MiB)
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.run)
            yield executor
            nursery.cancel_scope.cancel()

    def describe(task_id: str, stdout: bytes, stderr: bytes, code: int, hold: bool, timeout: float) -> RunSpec:
        lines = [f"printf '{stdout.decode()}'", f"printf '{stderr.decode()}' >&2"]
        lines += ["exec sleep 600"] if hold else [f"exit {code}"]
        return job(task_id, *lines, timeout=timeout)

    def filling(task_id: str) -> RunSpec:
        return job(task_id, "dd if=/dev/zero of=/out/f bs=1M count=6", "exec sleep 600")

    return Driver(node_id, open_executor, describe, filling)


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Driver:
    if request.param == "fake":
        return _fake_driver(tmp_path)
    return _docker_driver(tmp_path, request.getfixturevalue("node_id"))


async def _collect_logs(executor: Executor, task_id: str, into: list[LogChunk]) -> None:
    async for chunk in executor.logs(task_id):
        into.append(chunk)


async def test_one_outcome_per_task_with_its_output_and_exit_code(driver: Driver) -> None:
    async with driver.open() as executor:
        with trio.fail_after(30):
            await executor.start(driver.job("c-exit", stdout=b"hello", stderr=b"oops", exit_code=3))
            chunks: list[LogChunk] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect_logs, executor, "c-exit", chunks)
                outcome = await executor.wait("c-exit")
        assert (outcome.state, outcome.exit_code) == (RunOutcomeState.FAILED, 3)
        assert (outcome.stdout, outcome.stderr) == (b"hello", b"oops")
        assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"hello"
        assert outcome.finished_at >= outcome.started_at and outcome.gpu_seconds == 0
        with pytest.raises(UnknownTask):  # exactly one outcome: the task is gone after wait
            await executor.wait("c-exit")
        assert await executor.inspect("c-exit") is None and await executor.list_owned() == []
        await executor.discard("c-exit")


async def test_the_outcome_is_known_before_the_container_is_gone_and_wait_still_ends_the_task(driver: Driver) -> None:
    async with driver.open() as executor:
        with trio.fail_after(30):
            await executor.start(driver.job("c-early", stdout=b"early", exit_code=0))
            early = await executor.outcome("c-early")
            assert await executor.outcome("c-early") == early  # asking again changes nothing
            assert await executor.wait("c-early") == early
        assert (early.state, early.exit_code, early.stdout) == (RunOutcomeState.SUCCEEDED, 0, b"early")
        assert await executor.list_owned() == []
        for call in (executor.outcome("c-early"), executor.wait("c-early")):
            with pytest.raises(UnknownTask):
                await call
        await executor.discard("c-early")


async def test_a_second_start_is_refused_and_stop_cancels(driver: Driver) -> None:
    async with driver.open() as executor:
        with trio.fail_after(30):
            await executor.start(driver.job("c-hold", hold=True))
            with pytest.raises(ExecutorError) as refused:
                await executor.start(driver.job("c-hold", hold=True))
            assert refused.value.reason is Reason.TASK_EXISTS
            info = await executor.inspect("c-hold")
            assert info is not None and info.task_id == "c-hold" and info.node_id == driver.node_id
            assert [i.task_id for i in await executor.list_owned()] == ["c-hold"]
            with pytest.raises(ExecutorError) as busy:
                await executor.discard("c-hold")
            assert busy.value.reason is Reason.TASK_EXISTS
            await executor.stop("c-hold", "enough")
            outcome = await executor.wait("c-hold")
        assert outcome.state is RunOutcomeState.CANCELLED and "enough" in outcome.detail


async def test_the_time_limit_ends_a_job_as_timeout(driver: Driver) -> None:
    async with driver.open() as executor:
        with trio.fail_after(30):
            await executor.start(driver.job("c-slow", hold=True, timeout=1.0))
            outcome = await executor.wait("c-slow")
        assert outcome.state is RunOutcomeState.TIMEOUT and "time limit" in outcome.detail


async def test_unknown_tasks_are_a_typed_error(driver: Driver) -> None:
    async with driver.open() as executor:
        for call in (executor.wait("c-none"), executor.outcome("c-none"), executor.stop("c-none", "x")):
            with pytest.raises(UnknownTask):
                await call
        with pytest.raises(UnknownTask):
            async for _ in executor.logs("c-none"):
                pass
        assert await executor.inspect("c-none") is None


async def test_recover_reattaches_tracked_removes_untracked_and_reports_missing_as_lost(driver: Driver) -> None:
    with trio.fail_after(60):
        async with driver.open() as before:
            await before.start(driver.job("c-kept", hold=True))
            await before.start(driver.job("c-orphan", hold=True))
        # the service stopped (a provider restart); the containers run on
        async with driver.open() as after:
            report = await after.recover({"c-kept", "c-missing"})
            assert report.reattached == ("c-kept",) and report.removed == ("c-orphan",)
            assert [(o.task_id, o.state) for o in report.finished] == [("c-missing", RunOutcomeState.LOST)]
            assert [i.task_id for i in await after.list_owned()] == ["c-kept"]
            await after.stop("c-kept", "done")
            outcome = await after.wait("c-kept")
    assert outcome.state is RunOutcomeState.CANCELLED


async def test_a_job_that_fills_out_is_stopped_at_the_output_limit(driver: Driver) -> None:
    if driver.node_id != "fakenode" and os.geteuid() != 0:
        pytest.skip("a bounded /out needs the tmpfs mount (root)")
    async with driver.open() as executor:
        with trio.fail_after(30):
            await executor.start(driver.filling("c-fill"))
            outcome = await executor.wait("c-fill")
        assert outcome.state is RunOutcomeState.FAILED and outcome.reason is Reason.OUTPUT_LIMIT
        assert outcome.detail.startswith("output_limit")
        assert await executor.list_owned() == []
