#!/usr/bin/env python3
"""Benchmark: idle RSS and CPU of real node processes after convergence.

Starts a seed and P providers (default 9: ten processes) as real ``peerd run``
processes on loopback (``peerd.devnet``), with peerd's default network timings
(advert every 60 s, keepalive 5 s; ``--fast`` uses the devnet's 5 s adverts),
waits until every provider holds the advert of every other, lets them settle,
then samples each process with psutil over W seconds (default 30): CPU as % of
one core (cpu_times delta / wall), RSS at the end and its peak over the window.
Baseline in the same window: a process that has imported the daemon
(``peerd.daemon.node``, libp2p, docker SDK) and sleeps. Targets: <= 120 MB RSS,
<= 2 % of a core per node.

    .venv/bin/python scripts/bench/idle_nodes.py [-p 9] [-w 30] [--fast] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import psutil
from job_e2e import BenchNet

from peerd.devnet import wait_for

MB = 1 << 20
SETTLE = 5.0
BASELINE = "import peerd.daemon.node, peerd.cli.local, time; print('ready', flush=True); time.sleep(3600)"


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(procs: dict[str, psutil.Process], window: float) -> dict[str, tuple[float, float, float]]:
    """name -> (cpu % of one core, RSS MB at the end, peak RSS MB), sampled every second."""
    start = {name: cpu_seconds(p) for name, p in procs.items()}
    peak = {name: p.memory_info().rss for name, p in procs.items()}
    begun = time.monotonic()
    while (left := begun + window - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        for name, p in procs.items():
            peak[name] = max(peak[name], p.memory_info().rss)
    wall = time.monotonic() - begun
    out = {}
    for name, p in procs.items():
        rss = p.memory_info().rss
        out[name] = (100 * (cpu_seconds(p) - start[name]) / wall, rss / MB, max(peak[name], rss) / MB)
    return out


def main(providers: int, window: float, fast: bool) -> int:
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE], stdout=subprocess.PIPE, text=True)
    try:
        assert baseline.stdout is not None
        baseline.stdout.readline()
        with BenchNet("fast" if fast else "defaults") as net:
            begun = time.perf_counter()
            net.add_seed()
            names = [f"provider-{i}" for i in range(1, providers + 1)]
            for name in names:
                net.add(name, "provider")
            started = time.perf_counter() - begun
            wait_for("every provider to hold every other's advert",
                     lambda: all(net.nodes[n].status()["peers_known"] >= providers - 1 for n in names),
                     120, interval=0.5)
            converged = time.perf_counter() - begun
            time.sleep(SETTLE)
            procs = {name: psutil.Process(node.proc.pid) for name, node in net.nodes.items() if node.proc}
            procs["baseline (imports only)"] = psutil.Process(baseline.pid)
            figures = measure(procs, window)
    finally:
        baseline.kill()
        baseline.wait()
    config = "devnet fast timings (advert 5 s)" if fast else "default network timings (advert 60 s)"
    print(f"{len(net.nodes)} idle `peerd run` processes (seed + {providers} providers, loopback, {config}); "
          f"all started in {started:.1f} s, converged {converged:.1f} s after the first start; "
          f"measured over {window:g} s after {SETTLE:g} s settling.\n")
    print("| process | CPU % of a core | RSS MB | peak RSS MB |\n|---|---:|---:|---:|")
    for name, (cpu, rss, peak) in figures.items():
        print(f"| {name} | {cpu:.2f} | {rss:.1f} | {peak:.1f} |")
    nodes = {n: f for n, f in figures.items() if n in net.nodes}
    cpus = [f[0] for f in nodes.values()]
    rsses = [f[2] for f in nodes.values()]
    print(f"\nper node: CPU median {statistics.median(cpus):.2f} %, max **{max(cpus):.2f} %** (target <= 2 %); "
          f"peak RSS median {statistics.median(rsses):.1f} MB, max **{max(rsses):.1f} MB** (target <= 120 MB)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--providers", type=int, default=9)
    parser.add_argument("-w", "--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--fast", action="store_true", help="devnet timings (advert every 5 s)")
    parser.add_argument("--quick", action="store_true", help="10 s window")
    args = parser.parse_args()
    sys.exit(main(args.providers, 10.0 if args.quick else args.window, args.fast))
