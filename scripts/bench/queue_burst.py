#!/usr/bin/env python3
"""Benchmark: a burst of short jobs that queue for capacity vs plain `docker run` with the same concurrency.

A seed, two providers (each at most 8 jobs: ``[policy] max_concurrent``, the default) and one requester run as
real ``peerd run`` processes on loopback. The requester is given N jobs at once (``true`` in PEERD_TEST_IMAGE,
cpus 0.25, memory 16M, over one control connection); all but 16 find no room and wait ``queued``, and are placed
as slots free. The baseline, in the same run: N ``docker run --rm --network none --cpus 0.25 --memory 16m IMAGE
true`` with at most 16 at a time. Figures: jobs per second of each and their ratio (target ≥ 0.8), and how soon a
queued task is leased after a slot frees (its lease, from the requester's store, minus the end of the job before
it on that provider, from the provider's store; p50, p99).

    .venv/bin/python scripts/bench/queue_burst.py [-n 300] [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from job_e2e import IMAGE, BenchNet, percentile, trivial_spec

from peerd.control.client import ControlClient
from peerd.control.wire import to_value
from peerd.devnet import NodeProc

CPUS, MEMORY, SLOTS = 0.25, 16 << 20, 16  # two providers of 8 job slots


def via_network(requester: NodeProc, image: str, jobs: int) -> tuple[float, list[str], Counter[str]]:
    spec = to_value(trivial_spec(image, cpus=CPUS, memory=MEMORY))
    with ControlClient(requester.socket, timeout=30) as client:
        begun = time.perf_counter()
        ids = []
        for _ in range(jobs):
            submitted = client.call("submit", {"spec": spec, "local": False})
            assert isinstance(submitted, dict)
            ids.append(str(submitted["task_id"]))
        states: Counter[str] = Counter()
        for task_id in ids:
            view = client.call("wait", {"task_id": task_id}, no_timeout=True)
            assert isinstance(view, dict)
            states[str(view.get("state"))] += 1
        return time.perf_counter() - begun, ids, states


def via_docker(image: str, jobs: int) -> float:
    argv = ["docker", "run", "--rm", "--network", "none", "--cpus", str(CPUS), "--memory", "16m", image, "true"]
    begun = time.perf_counter()
    with ThreadPoolExecutor(SLOTS) as pool:
        codes = list(pool.map(lambda _: subprocess.run(argv, stdout=subprocess.DEVNULL).returncode, range(jobs)))
    if any(codes):
        raise SystemExit(f"bare docker runs failed: exit codes {Counter(codes)}")
    return time.perf_counter() - begun


def _rows(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def placement_latencies(requester: NodeProc, providers: list[NodeProc], ids: list[str]) -> list[float]:
    """For each task that waited (a refusal before its lease): its lease minus the end of the job before it."""
    ends: dict[str, list[float]] = {}
    for node in providers:
        peer = str(node.status()["peer_id"])
        ends[peer] = sorted(r["finished_at"] for r in _rows(node.home / "state.db", "SELECT finished_at FROM results"))
    wanted = set(ids)
    log: dict[str, list[sqlite3.Row]] = {}
    for row in _rows(requester.home / "state.db", "SELECT task_id, provider, outcome, at FROM attempts ORDER BY n"):
        if row["task_id"] in wanted:
            log.setdefault(row["task_id"], []).append(row)
    latencies = []
    for attempts in log.values():
        leased = next((a for a in attempts if a["outcome"] == "accepted"), None)
        if leased is None or attempts[0]["outcome"] == "accepted":
            continue  # placed at once: it never waited
        freed = ends.get(leased["provider"], [])
        i = bisect.bisect_right(freed, leased["at"])
        if i:
            latencies.append(leased["at"] - freed[i - 1])
    return latencies


def main(jobs: int, image: str) -> int:
    with BenchNet() as net:
        net.add_seed()
        providers = [net.add(f"provider-{i}", "provider") for i in (1, 2)]
        requester = net.add("requester", "requester")
        net.wait_adverts("requester", [p.name for p in providers])
        via_network(requester, image, 2)  # warm-up
        via_docker(image, 2)
        ours, ids, states = via_network(requester, image, jobs)
        bare = via_docker(image, jobs)
        latencies = placement_latencies(requester, providers, ids)
    print(f"{jobs} jobs at once (`true` in {image}, cpus {CPUS}, memory 16M) on two providers of 8 job slots "
          f"through seed + providers + requester (real processes, loopback) vs {jobs} bare `docker run --rm`, "
          f"{SLOTS} at a time; same run.\n")
    print("| what | seconds | jobs/s |\n|---|---:|---:|")
    print(f"| peerd (submit all at once, queued tasks placed as slots free) | {ours:.2f} | {jobs / ours:.1f} |")
    print(f"| docker run --rm, {SLOTS} at a time | {bare:.2f} | {jobs / bare:.1f} |")
    outcome = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    print(f"\npeerd throughput / docker throughput: **{bare / ours:.2f}** (target ≥ 0.8); peerd outcomes: {outcome}")
    if latencies:
        print(f"\nqueued tasks: {len(latencies)}; lease after a slot freed on that provider: "
              f"p50 {percentile(latencies, 50) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="100 jobs")
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()
    sys.exit(main(100 if args.quick else args.jobs, args.image))
