#!/usr/bin/env python3
"""Benchmark: many short jobs at once on one provider vs as many parallel `docker run`s.

A seed, one provider (policy.max_concurrent raised to fit the batch) and one
requester run as real ``peerd run`` processes on loopback. The requester is
given J jobs at once (``true`` in PEERD_TEST_IMAGE, cpus 0.1, memory 16M each,
all submitted over one control connection, then waited for); the baseline is J
``docker run --rm --network none --cpus 0.1 --memory 16m IMAGE true`` started
together. Each side runs R rounds, alternating; the figure is jobs per second
from the first submit to the last result (best and median round).

    .venv/bin/python scripts/bench/concurrent_jobs.py [-j 20] [-r 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter

from job_e2e import IMAGE, start_network, trivial_spec

from peerd.control.client import ControlClient
from peerd.control.wire import to_value
from peerd.devnet import NodeProc

MEMORY = 16 << 20
CPUS = 0.1


def via_network(requester: NodeProc, image: str, jobs: int) -> tuple[float, Counter[str]]:
    spec = to_value(trivial_spec(image, cpus=CPUS, memory=MEMORY))
    with ControlClient(requester.socket, timeout=30) as client:
        begun = time.perf_counter()
        ids = []
        for _ in range(jobs):
            submitted = client.call("submit", {"spec": spec, "local": False})
            assert isinstance(submitted, dict)
            ids.append(submitted["task_id"])
        states: Counter[str] = Counter()
        for task_id in ids:
            view = client.call("wait", {"task_id": task_id}, no_timeout=True)
            assert isinstance(view, dict)
            states[str(view.get("state"))] += 1
        return time.perf_counter() - begun, states


def via_docker(image: str, jobs: int) -> float:
    argv = ["docker", "run", "--rm", "--network", "none", "--cpus", str(CPUS), "--memory", "16m", image, "true"]
    begun = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(jobs)]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - begun
    if any(codes):
        raise SystemExit(f"bare docker runs failed: exit codes {codes}")
    return elapsed


def main(jobs: int, rounds: int, image: str) -> int:
    provider = {"policy": {"max_concurrent": max(32, jobs)}}
    with start_network(provider=provider) as net:
        requester = net.nodes["requester"]
        via_network(requester, image, 2)  # warm-up
        via_docker(image, 2)
        ours: list[float] = []
        bare: list[float] = []
        states: Counter[str] = Counter()
        for _ in range(rounds):
            elapsed, got = via_network(requester, image, jobs)
            ours.append(elapsed)
            states.update(got)
            bare.append(via_docker(image, jobs))
    print(f"{jobs} jobs at once (`true` in {image}, cpus {CPUS}, memory 16M) on one provider through seed + "
          f"provider + requester (real processes, loopback) vs {jobs} parallel bare `docker run`; "
          f"{rounds} round(s) each, alternating.\n")
    print("| what | rounds | best jobs/s | median jobs/s | median round s |\n|---|---:|---:|---:|---:|")
    for name, times in (("peerd (submit all, wait all)", ours), (f"{jobs} x docker run --rm in parallel", bare)):
        rates = [jobs / t for t in times]
        print(f"| {name} | {len(times)} | {max(rates):.1f} | {statistics.median(rates):.1f} | "
              f"{statistics.median(times):.2f} |")
    outcome = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    ratio = statistics.median(bare) / statistics.median(ours)
    print(f"\npeerd throughput / docker throughput (medians): **{ratio:.2f}**; peerd outcomes: {outcome}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=20)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round each")
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()
    sys.exit(main(args.jobs, 1 if args.quick else args.rounds, args.image))
