#!/usr/bin/env python3
"""Placement and start of a gang vs a single job, through real peerd processes.

    .venv/bin/python scripts/bench/gang_start.py [--rounds 5] [--nodes 2] [--quick]

Starts a seed, ``--nodes`` + 1 gang-enabled providers and a requester (``peerd.devnet``), then alternates,
``--rounds`` times: a single job (``peerd submit --wait -- true``, the baseline) and a gang of ``--nodes``
(``--nodes N``, the same command on every rank, each rank with its WireGuard overlay). Each figure is the
CLI's wall time from submit to the final state (placement, lease, container start and end, receipt). Prints
the median of each and the ratio, with the machine's cores and load, so it runs unchanged on a bigger host.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerd.devnet import DevNet, NodeProc  # noqa: E402

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")


def timed(requester: NodeProc, nodes: int) -> float:
    gang = ["--nodes", str(nodes)] if nodes > 1 else []
    started = time.perf_counter()
    done = requester.peerd("submit", "--image", IMAGE, "--cpus", "0.2", "--memory", "64M", *gang,
                           "--wait", "--json", "--", "true", timeout=300)
    elapsed = time.perf_counter() - started
    view = json.loads(done.stdout or "{}")
    if view.get("state") != "succeeded":
        raise SystemExit(f"a {nodes}-node job ended {view.get('state')}: {done.stdout[-400:]} {done.stderr[-400:]}")
    return elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    providers = [f"provider-{i}" for i in range(1, args.nodes + 2)]
    single: list[float] = []
    gang: list[float] = []
    with DevNet() as net:
        net.gangs = True
        net.add_seed()
        for name in providers:
            net.add(name, "provider")
        requester = net.add("requester", "requester")
        net.wait_adverts("requester", providers)
        timed(requester, 1)  # warm: the image's first export, connections
        for _ in range(rounds):
            single.append(timed(requester, 1))
            gang.append(timed(requester, args.nodes))
    one, many = statistics.median(single), statistics.median(gang)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {rounds} rounds, alternating")
    print(f"single job, submit → succeeded      median {one * 1000:8.0f} ms  (runs: "
          f"{', '.join(f'{s * 1000:.0f}' for s in single)})")
    print(f"gang of {args.nodes}, submit → succeeded       median {many * 1000:8.0f} ms  (runs: "
          f"{', '.join(f'{s * 1000:.0f}' for s in gang)})")
    print(f"gang / single: {many / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
