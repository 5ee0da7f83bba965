#!/usr/bin/env python3
"""Benchmark: the `peerd` CLI end to end, each figure a whole new process.

1. ``peerd submit --wait --image IMAGE -- true`` on a requester of a seed +
   provider + requester network (real ``peerd run`` processes on loopback) vs
   ``docker run --rm --network none IMAGE true``, alternating, N each after one
   warm-up of each: medians, p90, ratio of medians (target <= 1.3).
2. ``peerd status`` (connect, hello, one call, print) vs ``python -c pass`` with
   the same interpreter, alternating, M each: target < 150 ms.

The CLI is the venv's ``peerd`` console script.

    .venv/bin/python scripts/bench/cli_submit.py [-n 15] [-m 20] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from job_e2e import IMAGE, STATS_HEADER, docker_run, start_network, stats_row

PEERD = str(Path(sys.executable).with_name("peerd"))


def timed(argv: list[str]) -> float:
    begun = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - begun
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def main(runs: int, status_runs: int, image: str) -> int:
    # Measure the CLI as installed: with its bytecode (an editable checkout may have none, and with
    # PYTHONDONTWRITEBYTECODE every call would compile the package again).
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "peerd", "protocol"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL)
    with start_network() as net:
        home = str(net.nodes["requester"].home)
        submit = [PEERD, "--home", home, "submit", "--image", image, "--wait", "--", "true"]
        status = [PEERD, "--home", home, "status"]
        bare_python = [sys.executable, "-c", "pass"]
        timed(submit)  # warm-up of each
        docker_run(image)
        timed(status)
        timed(bare_python)
        ours: list[float] = []
        bare: list[float] = []
        for _ in range(runs):
            ours.append(timed(submit))
            bare.append(docker_run(image))
        status_times: list[float] = []
        python_times: list[float] = []
        for _ in range(status_runs):
            status_times.append(timed(status))
            python_times.append(timed(bare_python))
    ratio = statistics.median(ours) / statistics.median(bare)
    print("The `peerd` CLI as a new process each time, against a requester of seed + provider + requester "
          "(real processes, loopback); alternating with its baseline.\n")
    print(STATS_HEADER)
    print(stats_row("peerd submit --wait -- true", ours))
    print(stats_row("docker run --rm --network none", bare))
    print(stats_row("peerd status", status_times))
    print(stats_row("python -c pass", python_times))
    print(f"\nsubmit: ratio of medians peerd/docker **{ratio:.2f}** (target <= 1.3); "
          f"status: median **{statistics.median(status_times) * 1000:.0f} ms** (target < 150 ms), "
          f"{(statistics.median(status_times) - statistics.median(python_times)) * 1000:.0f} ms above a bare "
          f"interpreter start")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15, help="submit runs each")
    parser.add_argument("-m", "--status-runs", type=int, default=20, help="status runs each")
    parser.add_argument("--quick", action="store_true", help="5 submit and 10 status runs each")
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()
    quick = args.quick
    sys.exit(main(5 if quick else args.runs, 10 if quick else args.status_runs, args.image))
