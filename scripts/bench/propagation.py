#!/usr/bin/env python3
"""Benchmark: advert propagation across separate node processes on loopback.

For each size N (default 10 and 20) it starts one seed and N provider nodes,
each an OS process running a P2PService (scripts/bench/p2p_node.py) that knows
only the seed's address, and prints:

* convergence: seconds from spawning the nodes until every node holds every
  other node's advert (and from the last node being ready);
* propagation: after SETTLE seconds, for ROUNDS advert changes (one node at
  a time, every SPACING seconds), publish -> accepted latency at every other node (p50, p99) and
  publish -> all nodes (p50, p99 of the slowest receiver per advert);
* idle cost per node after the rounds (and SETTLE more seconds): RSS and CPU
  (% of one core) over IDLE seconds, against the baseline measured in the same run: a process that has
  imported everything but runs no host.

Targets: p99 publish -> node <= 1 s at 20 nodes, <= 120 MB RSS, <= 2 % CPU idle.

    .venv/bin/python scripts/bench/propagation.py [--sizes 10 20] [--idle 20] [--spacing 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import trio

NODE_SCRIPT = Path(__file__).with_name("p2p_node.py")
MB = 1 << 20


@dataclass
class Proc:
    name: str
    process: trio.Process
    ready: trio.Event = field(default_factory=trio.Event)
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    ready_at: float = 0.0
    knows: set[str] = field(default_factory=set)
    # (publisher peer, seq) -> (issued_at, received_at)
    adverts: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")


async def read_events(proc: Proc, changed: list[trio.Event]) -> None:
    assert proc.process.stdout is not None
    buf = b""
    async for chunk in proc.process.stdout:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            event = json.loads(line)
            if event["event"] == "ready":
                proc.peer_id, proc.addrs, proc.ready_at = event["peer_id"], event["addrs"], time.time()
                proc.ready.set()
            elif event["event"] == "advert":
                proc.knows.add(event["peer"])
                proc.adverts.setdefault((event["peer"], event["seq"]), (event["issued_at"], event["received_at"]))
            changed[0].set()


async def spawn(nursery: trio.Nursery, name: str, args: list[str], log: Path, changed: list[trio.Event]) -> Proc:
    with log.open("ab") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(NODE_SCRIPT), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
    proc = Proc(name, process)
    nursery.start_soon(read_events, proc, changed)
    return proc


async def wait_for(condition: object, changed: list[trio.Event], timeout: float, what: str) -> None:
    assert callable(condition)
    with trio.fail_after(timeout):
        while not condition():
            changed[0] = trio.Event()
            with trio.move_on_after(0.1):
                await changed[0].wait()
    if not condition():
        raise SystemExit(f"timed out: {what}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def run_size(n: int, args: argparse.Namespace, logdir: Path) -> dict[str, float]:
    changed = [trio.Event()]
    log = logdir / f"nodes-{n}.log"
    async with trio.open_nursery() as nursery:
        baseline = await spawn(nursery, "baseline", ["--bare"], log, changed)
        seed = await spawn(nursery, "seed", ["--seed"], log, changed)
        with trio.fail_after(60):
            await seed.ready.wait()
            await baseline.ready.wait()
        spawned = time.time()
        nodes = [await spawn(nursery, f"node{i}", ["--bootstrap", seed.addrs[0]], log, changed) for i in range(n)]
        with trio.fail_after(120):
            for node in nodes:
                await node.ready.wait()
        ids = {node.peer_id for node in nodes}

        def converged() -> bool:
            return all(ids - {nd.peer_id} <= nd.knows for nd in nodes)

        await wait_for(converged, changed, 120, "convergence")
        done = time.time()
        result = {
            "converge_from_spawn": done - spawned,
            "converge_from_last_ready": done - max(x.ready_at for x in nodes),
        }
        result["startup_cpu"] = sum(cpu_seconds(nd.process.pid) for nd in [*nodes, seed])

        await trio.sleep(args.settle)
        rounds_start = time.time()
        cpu_before = sum(cpu_seconds(nd.process.pid) for nd in [*nodes, seed])
        rounds = args.rounds or 3 * n
        for i in range(rounds):
            await nodes[i % n].send("change")
            await trio.sleep(args.spacing)
        changed_ids = {nodes[i % n].peer_id for i in range(rounds)}

        def published() -> list[tuple[str, int]]:
            keys: set[tuple[str, int]] = set()
            for nd in nodes:
                keys |= {k for k, (issued, _) in nd.adverts.items() if issued >= rounds_start and k[0] in changed_ids}
            return sorted(keys)

        def all_delivered() -> bool:
            keys = published()
            return len(keys) >= rounds and all(
                key in nd.adverts for key in keys for nd in nodes if nd.peer_id != key[0]
            )

        with trio.move_on_after(15):
            await wait_for(all_delivered, changed, 15, "deliveries")
        rounds_cpu = sum(cpu_seconds(nd.process.pid) for nd in [*nodes, seed]) - cpu_before
        rounds_wall = time.time() - rounds_start
        per_node: list[float] = []
        per_advert: list[float] = []
        missing = 0
        for key in published():
            receivers = [nd for nd in nodes if nd.peer_id != key[0]]
            got = [nd.adverts[key] for nd in receivers if key in nd.adverts]
            missing += len(receivers) - len(got)
            latencies = [received - issued for issued, received in got]
            per_node += latencies
            if len(got) == len(receivers):
                per_advert.append(max(latencies))
        result.update(
            rounds_cpu=rounds_cpu, rounds_wall=rounds_wall,
            adverts=len(published()), missing=missing,
            p50=pct(per_node, 0.5), p99=pct(per_node, 0.99),
            all_p50=pct(per_advert, 0.5) if per_advert else float("nan"),
            all_p99=pct(per_advert, 0.99) if per_advert else float("nan"),
        )

        await trio.sleep(args.settle)
        watched = [*nodes, seed, baseline]
        before = {p.name: cpu_seconds(p.process.pid) for p in watched}
        await trio.sleep(args.idle)
        cpu = {p.name: (cpu_seconds(p.process.pid) - before[p.name]) / args.idle * 100 for p in watched}
        rss = {p.name: psutil.Process(p.process.pid).memory_info().rss / MB for p in watched}
        node_cpu = [cpu[nd.name] for nd in nodes]
        node_rss = [rss[nd.name] for nd in nodes]
        result.update(
            cpu_median=statistics.median(node_cpu), cpu_max=max(node_cpu),
            rss_median=statistics.median(node_rss), rss_max=max(node_rss),
            seed_cpu=cpu["seed"], seed_rss=rss["seed"],
            base_cpu=cpu["baseline"], base_rss=rss["baseline"],
        )
        for proc in watched:
            with trio.move_on_after(2):
                await proc.send("quit")
        with trio.move_on_after(10):
            for proc in watched:
                await proc.process.wait()
        for proc in watched:
            if proc.process.returncode is None:
                proc.process.kill()
        nursery.cancel_scope.cancel()
    return result


def report(n: int, r: dict[str, float]) -> None:
    print(f"\n== {n} nodes + 1 seed, one process each ==")
    print(f"convergence (every node holds every advert): {r['converge_from_spawn']:.2f}s from spawn, "
          f"{r['converge_from_last_ready']:.2f}s after the last node was ready")
    print(f"CPU of all nodes until converged: {r['startup_cpu']:.1f}s")
    print(f"adverts changed: {r['adverts']:.0f}, deliveries missing: {r['missing']:.0f}; CPU of all nodes "
          f"meanwhile {r['rounds_cpu']:.1f}s in {r['rounds_wall']:.1f}s, "
          f"{r['rounds_cpu'] / max(1.0, r['adverts'] * n) * 1000:.1f} ms per delivery")
    print(f"publish -> each node: p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms (target p99 <= 1000 ms)")
    print(f"publish -> all nodes: p50 {r['all_p50'] * 1000:.0f} ms, p99 {r['all_p99'] * 1000:.0f} ms")
    print(f"idle per node: RSS median {r['rss_median']:.0f} MB, max {r['rss_max']:.0f} MB (target <= 120); "
          f"CPU median {r['cpu_median']:.2f} %, max {r['cpu_max']:.2f} % of a core (target <= 2)")
    print(f"idle seed: RSS {r['seed_rss']:.0f} MB, CPU {r['seed_cpu']:.2f} %")
    print(f"baseline (everything imported, no host): RSS {r['base_rss']:.0f} MB, CPU {r['base_cpu']:.2f} %")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="peerd-bench-") as tmp:
        logdir = Path(args.logdir) if args.logdir else Path(tmp)
        print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, node stderr in {logdir}")
        for n in args.sizes:
            report(n, await run_size(n, args, logdir))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--rounds", type=int, default=0, help="advert changes per size (default 3 x N)")
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between two changes")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the idle window")
    parser.add_argument("--idle", type=float, default=20.0, help="idle window in seconds")
    parser.add_argument("--logdir", default="", help="keep node stderr here")
    trio.run(main, parser.parse_args())
