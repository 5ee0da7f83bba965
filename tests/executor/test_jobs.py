"""Jobs on the real dockerd: results, limits, cancellation, refusals, cleanup."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from peerd.data.blobstore import BlockingChunkStore
from peerd.executor import (
    DockerExecutor,
    ExecutorError,
    ImageUnavailable,
    PolicyError,
    ProviderPolicy,
    PullProgress,
    Reason,
    RunOutcomeState,
    UnknownTask,
)
from peerd.executor.gpuaccess import GpuAccess, GpuSupport
from tests.executor.helpers import IMAGE, MiB, closed_loopback_port, job, output_files
from tests.executor.registry import Registry

pytestmark = pytest.mark.docker  # needs a real dockerd


async def test_output_files_logs_and_exit_code_come_back(
    executor: DockerExecutor, workdir: Path, files: BlockingChunkStore
) -> None:
    spec = job(
        "result-1",
        "echo hello; echo oops >&2; id -u",
        "mkdir /out/sub && echo data > /out/sub/r.txt && printf x > /out/top",
        "exit 3",
    )
    outcome = await executor.run_job(spec)

    assert outcome.state is RunOutcomeState.FAILED and outcome.exit_code == 3
    assert outcome.stdout == b"hello\n65534\n" and outcome.stderr == b"oops\n"
    assert output_files(files, outcome) == {"sub/r.txt": b"data\n", "top": b"x"}
    assert outcome.output_manifest is not None and outcome.output_digest == outcome.output_manifest.hex()
    assert outcome.output_size == 6
    assert not (workdir / "result-1" / "out").exists()  # only the chunks stay
    assert 0 <= outcome.wall_time < 10 and outcome.finished_at >= outcome.started_at
    assert outcome.gpu_seconds == 0
    assert await executor.list_owned() == []  # the container is gone


async def test_success_without_outputs(executor: DockerExecutor) -> None:
    outcome = await executor.run_job(job("ok-1", "echo fine"))
    assert (outcome.state, outcome.exit_code, outcome.stdout) == (RunOutcomeState.SUCCEEDED, 0, b"fine\n")
    assert (outcome.output_manifest, outcome.output_digest, outcome.output_size) == (None, "", 0)


async def test_over_the_time_limit_is_killed_and_reported_timeout(executor: DockerExecutor) -> None:
    with trio.fail_after(10):
        begun = trio.current_time()
        outcome = await executor.run_job(job("slow-1", "echo started; sleep 60", timeout=0.5))
    assert outcome.state is RunOutcomeState.TIMEOUT
    assert outcome.stdout == b"started\n"
    assert "time limit" in outcome.detail
    assert trio.current_time() - begun < 5  # limit + grace (1 s), not 60 s
    assert await executor.list_owned() == []


async def test_cancel_stops_within_seconds(executor: DockerExecutor) -> None:
    await executor.start(job("cancel-1", "sleep 60"))
    with trio.fail_after(5):
        await executor.stop("cancel-1", "requester changed their mind")
        outcome = await executor.wait("cancel-1")
    assert outcome.state is RunOutcomeState.CANCELLED
    assert "requester changed their mind" in outcome.detail
    assert await executor.list_owned() == []


async def test_a_cancel_that_arrives_during_start_is_honoured(executor: DockerExecutor) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.start, job("early-1", "sleep 60"))
        await trio.testing.wait_all_tasks_blocked()  # start() is inside dockerd now
        await executor.stop("early-1", "changed my mind early")
    with trio.fail_after(5):
        outcome = await executor.wait("early-1")
    assert outcome.state is RunOutcomeState.CANCELLED and "early" in outcome.detail


async def test_discard_deletes_the_task_dir(executor: DockerExecutor, workdir: Path) -> None:
    outcome = await executor.run_job(job("keep-1", "echo x > /out/x"))
    assert outcome.output_manifest is not None and not (workdir / "keep-1" / "out").exists()
    await executor.discard("keep-1")
    assert not (workdir / "keep-1").exists()


async def test_exceeding_the_memory_limit_is_reported_oom(executor: DockerExecutor) -> None:
    spec = job("oom-1", 'x=$(head -c 64000000 /dev/zero | tr "\\0" a)', "echo survived", memory=8 * MiB)
    outcome = await executor.run_job(spec)
    assert outcome.state is RunOutcomeState.OOM, outcome
    assert b"survived" not in outcome.stdout


async def test_logs_stream_while_the_job_runs(executor: DockerExecutor, workdir: Path) -> None:
    await executor.start(
        job("stream-1", "echo first", "while [ ! -e /out/go ]; do sleep 0.05; done", "echo second >&2")
    )
    seen: list[tuple[str, bytes]] = []
    with trio.fail_after(10):
        async for chunk in executor.logs("stream-1"):
            seen.append((chunk.stream, chunk.data))
            if chunk.data == b"first\n":  # the job is still blocked: this chunk came live
                (workdir / "stream-1" / "out" / "go").touch()
        outcome = await executor.wait("stream-1")
    assert seen == [("stdout", b"first\n"), ("stderr", b"second\n")]
    assert outcome.state is RunOutcomeState.SUCCEEDED


async def test_log_tails_are_bounded(nursery: trio.Nursery, node_id: str, workdir: Path) -> None:
    ex = DockerExecutor(node_id, workdir, log_limit=1000)
    await nursery.start(ex.run)
    outcome = await ex.run_job(job("chatty-1", "for i in $(seq 1 2000); do echo line$i; done"))
    assert len(outcome.stdout) == 1000
    assert outcome.stdout.endswith(b"line2000\n")


async def test_links_in_out_are_left_out_and_flagged(executor: DockerExecutor, files: BlockingChunkStore) -> None:
    outcome = await executor.run_job(job("link-1", "head -c 6000 /dev/zero > /out/a", "ln -s /etc/passwd /out/link"))
    assert outcome.state is RunOutcomeState.SUCCEEDED and outcome.reason is None
    assert outcome.output_truncated and "outputs truncated" in outcome.detail
    assert output_files(files, outcome) == {"a": bytes(6000)}


async def test_missing_image_without_registry_is_image_unavailable_quickly(
    executor: DockerExecutor, workdir: Path
) -> None:
    image = f"127.0.0.1:{closed_loopback_port()}/peerd-test/missing:1"
    with trio.fail_after(15):
        with pytest.raises(ImageUnavailable) as raised:
            await executor.start(job("nopull-1", "true", image=image))
    assert raised.value.reason is Reason.IMAGE_UNAVAILABLE and image in raised.value.detail
    assert await executor.list_owned() == []
    assert not (workdir / "nopull-1").exists()


async def test_gpu_job_on_a_host_without_nvidia_runtime_is_refused_up_front(executor: DockerExecutor) -> None:
    executor.gpu_support = GpuSupport(GpuAccess.NONE, "no toolkit")  # whatever this host's dockerd has
    spec = job("gpu-1", "true", gpus=("GPU-00000000-0000-4000-8000-000000000000",))
    with pytest.raises(PolicyError) as raised:
        await executor.start(spec)
    assert raised.value.reason is Reason.NO_GPU_RUNTIME
    assert await executor.list_owned() == []


@pytest.mark.parametrize("access", [GpuAccess.HOOK, GpuAccess.CDI, GpuAccess.RUNTIME])
async def test_a_gpu_start_dockerd_cannot_serve_takes_gpu_support_back(
    executor: DockerExecutor, workdir: Path, access: GpuAccess,
) -> None:
    if executor.gpu_runtime:
        pytest.skip(f"this dockerd gives containers GPUs ({executor.gpu_support.detail})")
    changes: list[bool] = []
    executor.on_gpu_change = lambda: changes.append(executor.gpu_runtime)
    executor.gpu_support = GpuSupport(access, "wrongly decided")  # as a wrong decision would have it
    with pytest.raises(ExecutorError) as raised:
        await executor.start(job("gpu-2", "true", gpus=("GPU-00000000-0000-4000-8000-000000000000",)))
    assert raised.value.reason is Reason.NO_GPU_RUNTIME, raised.value.detail
    assert not executor.gpu_runtime and changes == [False]  # the advert is told at once
    assert await executor.list_owned() == [] and not (workdir / "gpu-2").exists()
    with pytest.raises(PolicyError):  # the next GPU job is refused up front
        await executor.start(job("gpu-3", "true", gpus=("GPU-00000000-0000-4000-8000-000000000000",)))


async def test_network_needs_the_job_to_ask_and_the_policy_to_allow(
    nursery: trio.Nursery, node_id: str, workdir: Path, executor: DockerExecutor
) -> None:
    with pytest.raises(PolicyError) as raised:
        await executor.start(job("net-1", "true", network=True))
    assert raised.value.reason is Reason.NETWORK_NOT_ALLOWED

    open_ex = DockerExecutor(node_id, workdir, policy=ProviderPolicy(allow_network=True))
    await nursery.start(open_ex.run)
    await open_ex.start(job("net-2", "cat /proc/net/dev", network=True))
    info = await open_ex.inspect("net-2")
    outcome = await open_ex.wait("net-2")
    assert info is not None and outcome.state is RunOutcomeState.SUCCEEDED
    assert b"eth0" in outcome.stdout  # the default bridge, nothing more


async def test_policy_refusals_are_typed(nursery: trio.Nursery, node_id: str, workdir: Path) -> None:
    policy = ProviderPolicy(allowed_images=("registry.example/*",), max_time_limit=60)
    ex = DockerExecutor(node_id, workdir, policy=policy)
    await nursery.start(ex.run)
    with pytest.raises(PolicyError) as raised:
        await ex.start(job("pol-1", "true"))
    assert raised.value.reason is Reason.IMAGE_NOT_ALLOWED


async def test_a_task_id_runs_once(executor: DockerExecutor) -> None:
    await executor.start(job("twice-1", "sleep 60"))
    with pytest.raises(ExecutorError) as raised:
        await executor.start(job("twice-1", "true"))
    assert raised.value.reason is Reason.TASK_EXISTS
    await executor.stop("twice-1", "done")
    assert (await executor.wait("twice-1")).state is RunOutcomeState.CANCELLED


async def test_a_job_that_cannot_start_leaves_no_container(executor: DockerExecutor) -> None:
    with pytest.raises(ExecutorError) as raised:
        await executor.start(job("nostart-1", "true", command=("/no/such/binary",)))
    assert raised.value.reason is Reason.START_FAILED
    assert await executor.list_owned() == []


async def test_unknown_tasks_are_typed_errors(executor: DockerExecutor) -> None:
    with pytest.raises(UnknownTask):
        await executor.wait("never-started")
    with pytest.raises(UnknownTask):
        await executor.stop("never-started", "x")
    assert await executor.inspect("never-started") is None


async def test_concurrent_jobs_keep_their_own_outputs(executor: DockerExecutor, files: BlockingChunkStore) -> None:
    outcomes = {}

    async def one(i: int) -> None:
        outcomes[i] = await executor.run_job(job(f"many-{i}", f"echo {i} > /out/me; echo {i}"))

    started = time.monotonic()
    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(one, i)
    assert time.monotonic() - started < 20
    for i, outcome in outcomes.items():
        assert outcome.stdout == f"{i}\n".encode()
        assert output_files(files, outcome) == {"me": f"{i}\n".encode()}



async def test_a_missing_image_is_pulled_with_progress_events(
    executor: DockerExecutor, nursery: trio.Nursery, node_id: str
) -> None:
    registry = Registry.with_busybox(f"peerd-test/{node_id}", "1")
    listeners = await nursery.start(partial(trio.serve_tcp, registry.handle, 0, host="127.0.0.1"))
    image = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}/{registry.name}:1"
    events: list[PullProgress] = []
    try:
        with trio.fail_after(30):
            outcome = await executor.run_job(job("pull-1", "echo pulled", image=image), on_pull=events.append)
        assert outcome.state is RunOutcomeState.SUCCEEDED and outcome.stdout == b"pulled\n"
        assert any(e.status == "Download complete" for e in events), events
        assert all(e.image == image for e in events)
        assert any(r.startswith("GET /v2/" + registry.name + "/blobs/") for r in registry.requests)
    finally:
        await trio.run_process(["docker", "image", "rm", "-f", image], capture_stdout=True, check=False)


async def test_image_cuda_reads_a_local_images_nvidia_require_cuda(executor: DockerExecutor, node_id: str) -> None:
    tag = f"peerd-test/require-cuda-{node_id.lower()}:1"
    dockerfile = f"FROM {IMAGE}\nENV NVIDIA_REQUIRE_CUDA=\"cuda>=12.4 brand=tesla,driver>=470,driver<471\"\n"
    built = await trio.run_process(["docker", "build", "-q", "-t", tag, "-"], stdin=dockerfile.encode(),
                                   capture_stdout=True, capture_stderr=True, check=False)
    assert built.returncode == 0, built.stderr
    try:
        assert await executor.image_cuda(tag) == "12.4"
        assert await executor.image_cuda(IMAGE) == ""  # asks for none
        assert await executor.image_cuda("peerd-test/no-such-image:1") == ""  # not here: the toolkit checks it
    finally:
        await executor.engine.remove_image(tag)
