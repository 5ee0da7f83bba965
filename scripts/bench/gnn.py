#!/usr/bin/env python3
"""Benchmark: GNN epoch time (examples/gnn/train.py) on N ranks vs 1 rank, beside the machine's cores.

Plain docker (default): 1 rank in one container with no network (with every core as torch threads, and
with 1 thread: on a small busy host more threads can be much slower), then N ranks as N containers on a
user-defined docker bridge network, gloo over it; every container under the job sandbox (read-only root,
user nobody, no capabilities). N ranks get the machine's cores split evenly (``--threads`` per rank = cores
// ranks, at least 1), so on a host with fewer cores than ranks the ranks share cores and no speed-up is
expected: the figures say what this host does, not what N hosts would. ``--peerd`` instead runs
examples/gnn/run (a local peerd network, ``peerd submit --nodes N``; needs gang jobs) and reports its figures.
Builds the image first when it is missing (examples/gnn/build-image; minutes).

    .venv/bin/python scripts/bench/gnn.py [--ranks 3] [--epochs 5] [--graph-nodes 100000] [--repeat 3] [--quick]
        [--peerd]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "peerd-examples/gnn:1"
SANDBOX = ["--read-only", "--tmpfs", "/tmp:rw,size=64m", "--user", "65534:65534", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--memory", "3g"]
TIMEOUT_S = 3600


def ensure_image() -> float | None:
    """Build the image if missing; the seconds it took, or None when it was there."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode == 0:
        return None
    began = time.perf_counter()
    subprocess.run([str(ROOT / "examples" / "gnn" / "build-image")], check=True, stdout=sys.stderr)
    return time.perf_counter() - began


def final_result(stdout: str) -> dict[str, object]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "result":
                return dict(record)
    raise SystemExit(f"no result line in:\n{stdout[-2000:]}")


def docker_ranks(ranks: int, train: list[str]) -> list[dict[str, object]]:
    """train.py on ``ranks`` containers; every rank's result line."""
    network = f"peerd-gnn-bench-{secrets.token_hex(4)}" if ranks > 1 else "none"
    names = [f"{network}-rank{r}" for r in range(ranks)]
    if ranks > 1:
        subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    try:
        procs = [subprocess.Popen(
            ["docker", "run", "--rm", "--name", name, "--hostname", name, "--network", network, *SANDBOX,
             "-e", f"MASTER_ADDR={names[0]}", "-e", "MASTER_PORT=29500", "-e", f"RANK={rank}",
             "-e", f"WORLD_SIZE={ranks}", "-e", "GLOO_SOCKET_IFNAME=eth0", IMAGE, *train],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank, name in enumerate(names)]
        found = []
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            if proc.returncode != 0:
                raise SystemExit(f"a rank failed ({proc.returncode}):\n{err[-2000:]}")
            found.append(final_result(out))
        return found
    finally:
        if ranks > 1:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)
            subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def plain_docker(args: argparse.Namespace, cores: int) -> None:
    """1 rank with every core, 1 rank with 1 thread, N ranks with cores // N threads each; alternating
    ``--repeat`` times (other load on the host drifts): the medians."""
    setups = list(dict.fromkeys([(1, cores), (1, 1), (args.ranks, max(1, cores // args.ranks))]))
    times: dict[tuple[int, int], list[float]] = {s: [] for s in setups}
    accuracy: dict[tuple[int, int], float] = {}
    for _ in range(args.repeat):
        for ranks, threads in setups:
            train = ["python3", "/opt/gnn/train.py", "--epochs", str(args.epochs), "--graph-nodes",
                     str(args.graph_nodes), "--threads", str(threads), "--out", ""]
            results = docker_ranks(ranks, train)
            times[ranks, threads].append(max(float(str(r["epoch_time_s"])) for r in results))  # the slowest
            accuracy[ranks, threads] = float(str(results[0]["test_accuracy"]))
    base = statistics.median(times[setups[0]])
    print(f"epoch time: median of {args.repeat} run(s) of each, each run's mean epoch without the first\n")
    print("| ranks | threads per rank | epoch time (s) | runs (s) | speed-up vs 1 rank, all cores | test accuracy |")
    print("|---|---|---|---|---|---|")
    for (ranks, threads), runs in times.items():
        epoch = statistics.median(runs)
        print(f"| {ranks} | {threads} | {epoch:.3f} | {', '.join(f'{t:.2f}' for t in runs)} | "
              f"{base / epoch:.2f}x | {accuracy[ranks, threads]:.4f} |")
    spread = max(accuracy.values()) - min(accuracy.values())
    print(f"\ntest accuracy spread over the setups: {spread:.4f} (tolerance 0.01)")


def through_peerd(args: argparse.Namespace) -> None:
    out = subprocess.run([str(ROOT / "examples" / "gnn" / "run"), "--epochs", str(args.epochs), "--nodes",
                          str(args.ranks), "--json"], capture_output=True, text=True, timeout=TIMEOUT_S,
                         check=False, env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    if not lines:
        raise SystemExit(f"examples/gnn/run gave no figures ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    runs = json.loads(lines[-1])
    base = next((r["epoch_time_s"] for r in runs if r["nodes"] == 1), None)
    print("| nodes | state | epoch time (s) | speed-up vs 1 node | test accuracy | cost per epoch (credits) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        epoch = r["epoch_time_s"]
        speed = f"{base / epoch:.2f}x" if base and epoch else "-"
        print(f"| {r['nodes']} | {r['state']} | {epoch if epoch is not None else '-'} | {speed} | "
              f"{r['test_accuracy'] if r['test_accuracy'] is not None else '-'} | {r['cost_per_epoch'] or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--graph-nodes", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating (medians)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 run of each")
    parser.add_argument("--peerd", action="store_true", help="through a local peerd network (needs gang jobs)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.repeat = 2, 1
    cores = len(os.sched_getaffinity(0))
    built = ensure_image()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {cores} cores (os.cpu_count {os.cpu_count()}), load average {load}; "
          f"graph {args.graph_nodes} nodes, {args.epochs} epochs; "
          + (f"image built in {built:.0f} s" if built is not None else "image already built"))
    print(f"{args.ranks} ranks {'as a peerd gang' if args.peerd else 'as docker containers'} on this one host "
          "share its cores: a speed-up needs more cores than ranks (or one host per rank).\n")
    if args.peerd:
        through_peerd(args)
    else:
        plain_docker(args, cores)


if __name__ == "__main__":
    main()
