#!/usr/bin/env python3
"""Benchmark: a trivial job through DockerExecutor vs `docker run --rm --network none`.

Both run the same image and command (`true` in PEERD_TEST_IMAGE, default
peerd-test/busybox:1), alternating, N times each after one warm-up of each;
prints the medians and their ratio (target <= 1.2). The executor's figure is a
whole job: create, start, follow output, wait, inspect, archive /out, remove.

    .venv/bin/python scripts/bench/executor_overhead.py [-n 10] [--image IMAGE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import trio

from peerd.executor import DockerExecutor, RunOutcomeState, RunSpec


def spec(image: str, i: int) -> RunSpec:
    return RunSpec(task_id=f"bench-{i}", image=image, command=("true",), cpus=1.0, memory=64 << 20, timeout=60)


async def via_executor(executor: DockerExecutor, image: str, i: int) -> float:
    begun = time.perf_counter()
    outcome = await executor.run_job(spec(image, i))
    elapsed = time.perf_counter() - begun
    if outcome.state is not RunOutcomeState.SUCCEEDED:
        raise SystemExit(f"executor job failed: {outcome}")
    return elapsed


async def via_cli(image: str) -> float:
    begun = time.perf_counter()
    await trio.run_process(["docker", "run", "--rm", "--network", "none", image, "true"])
    return time.perf_counter() - begun


async def main(runs: int, image: str) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as work:
        executor = DockerExecutor(f"bench{uuid.uuid4().hex[:8]}", Path(work))
        async with trio.open_nursery() as nursery:
            info = await nursery.start(executor.run)
            await via_executor(executor, image, -1)  # warm-up: connection pool, caches
            await via_cli(image)
            ours: list[float] = []
            cli: list[float] = []
            for i in range(runs):
                ours.append(await via_executor(executor, image, i))
                cli.append(await via_cli(image))
            nursery.cancel_scope.cancel()
    ours_median, cli_median = statistics.median(ours), statistics.median(cli)
    print(f"docker {info.version} (API {info.api_version}), image {image}, N={runs} each, alternating")
    for label, median, samples in (("executor run_job ", ours_median, ours), ("docker run --rm  ", cli_median, cli)):
        print(f"{label} median {median * 1000:7.1f} ms  min {min(samples) * 1000:7.1f}  max {max(samples) * 1000:7.1f}")
    print(f"ratio executor/cli {ours_median / cli_median:.2f} (target <= 1.20)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10)
    parser.add_argument("--image", default=os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1"))
    args = parser.parse_args()
    trio.run(main, args.runs, args.image)
