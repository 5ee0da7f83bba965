#!/usr/bin/env python3
"""Benchmark: control-socket `status` latency of a node under a gossip flood vs without.

A seed and a target provider run as real ``peerd run`` processes on loopback.
W load processes (this script with ``--worker``, niced +10 so that on a small
machine they take CPU the node does not want, as if they ran elsewhere) each
run K real libp2p hosts (``peerd.p2p.host.open_node``, own Ed25519 keys),
connect them to the target only, and publish freshly signed adverts on the
advert topic, together about RATE adverts per second (default 1,000). Each
host stays under gossipsub's per-forwarder limit (50 msg/s), so the flood
reaches the node's advert validator; the peer table's per-source bucket (2/s,
burst 10) then drops most of it as ``rate_limited`` before any signature check,
and the rest is verified and accepted.

A client holds one control connection to the target and calls ``status`` in
a loop (a 10 ms pause between calls) for D seconds without load (the load
hosts connected but silent), then D seconds under load. Prints p50/p99/max per
phase, the node's CPU, and what became of the flood: offered (publish calls),
dropped by the senders' gossip queues (the library drops an RPC when a peer's
32-slot queue is full, i.e. the node reads too slowly), and from the node's own
counters what reached its advert validator, was accepted, or rate-limited.

    .venv/bin/python scripts/bench/control_latency.py [--rate 1000] [-d 20] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
from job_e2e import BenchNet, percentile

from peerd.control.client import ControlClient
from peerd.devnet import NodeProc
from peerd.market.peertable import AdvertVerdict

GIB = 1 << 30
PER_HOST_RATE = 40.0  # stay under gossipsub's 50 msg/s per forwarding peer
PAUSE = 0.01


# ---------------------------------------------------------------- load worker (own process)
def _advert_pool(signer: object, addr: str, count: int) -> list[bytes]:
    from protocol.messages import Advert, NodeRole
    from protocol.signing import Signer, seal_bytes

    assert isinstance(signer, Signer)
    now = time.time()
    base = Advert(
        peer_id=signer.peer_id, seq=0, issued_at=now, expires_at=now + 300, role=NodeRole.PROVIDER,
        addrs=(addr,), version="bench-flood", cpus=4.0, memory=8 * GIB, disk=50 * GIB, gpus=(),
        free_cpus=4.0, free_memory=8 * GIB, free_gpus=(), queue_depth=0, running=0,
        price_cpu_hour=0.01, price_gpu_hour=0.5, docker=True, gpu_runtime=False, network=False,
        max_timeout=3600.0, draining=False,
    )
    first = int(now * 100)
    return [seal_bytes(dataclasses.replace(base, seq=first + i), signer) for i in range(count)]


def worker(target: str, hosts: int, rate: float, duration: float) -> None:
    import trio

    trio.run(_worker, target, hosts, rate, duration)


async def _worker(target: str, hosts: int, rate: float, duration: float) -> None:
    import trio

    from peerd.p2p.adverts import ADVERT_TOPIC
    from peerd.p2p.dialing import connect, split_p2p, to_id
    from peerd.p2p.host import open_node
    from protocol.signing import Signer

    _, target_id = split_p2p(target)
    assert target_id is not None
    published: Counter[str] = Counter()
    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(hosts):
            signer = Signer.generate()
            node = await stack.enter_async_context(
                open_node(signer, ["/ip4/127.0.0.1/tcp/0"], topics=frozenset({ADVERT_TOPIC})))
            await connect(node, target_id, [target], timeout=10)
            _count_sender_drops(node.gossipsub, published)
            addr = f"{node.host.get_addrs()[0]}"
            # one pre-sealed advert per publish, seq rising: none is ever a replay
            nodes.append((node, _advert_pool(signer, addr, int(rate / hosts * duration) + 10)))
        with trio.fail_after(20):  # the target's subscription reached every host
            while not all(to_id(target_id) in n.pubsub.peer_topics.get(ADVERT_TOPIC, ()) for n, _ in nodes):
                await trio.sleep(0.05)
        print(json.dumps({"ready": True}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        await stdin.receive_some(64)  # "go"
        per_host = rate / hosts
        begun, cpu = trio.current_time(), time.process_time()
        async with trio.open_nursery() as nursery:
            for i, (node, pool) in enumerate(nodes):
                nursery.start_soon(_publish, node, pool, per_host, begun + i / rate, begun + duration, published)
        print(json.dumps({"published": published["ok"], "failed": published["failed"],
                          "drop_full": published["drop_full"], "drop_closed": published["drop_closed"],
                          "seconds": trio.current_time() - begun, "cpu": time.process_time() - cpu}), flush=True)


def _count_sender_drops(router: object, published: Counter[str]) -> None:
    """Count advert sends gossipsub drops on this host's outbound queue (it only logs them).

    The queue refuses an RPC when it holds 32 already ("full": the node reads
    too slowly) or when its stream is gone ("closed"). A dropped advert may be
    sent again when the node asks for it (IWANT), and dropped again: these
    count sends, not distinct adverts.
    """
    original = router._handle_dropped_rpc  # type: ignore[attr-defined]
    queues = router.pubsub.peer_queues  # type: ignore[attr-defined]

    def counted(peer_id: object, rpc: object, reason: str) -> None:
        queue = queues.get(peer_id)
        sends = len(rpc.publish)  # type: ignore[attr-defined]
        published["drop_closed" if queue is None or queue.closed else "drop_full"] += sends
        original(peer_id, rpc, reason)

    router._handle_dropped_rpc = counted  # type: ignore[attr-defined]


async def _publish(node: object, pool: list[bytes], rate: float, start: float, end: float,
                   published: Counter[str]) -> None:
    import trio

    from peerd.p2p.adverts import ADVERT_TOPIC

    due = start
    i = 0
    while due < end:
        await trio.sleep_until(due)
        try:
            await node.pubsub.publish(ADVERT_TOPIC, pool[i % len(pool)])  # type: ignore[attr-defined]
            published["ok"] += 1
        except Exception:  # a bench worker: count, keep going
            published["failed"] += 1
        i += 1
        await trio.sleep(0)  # let the host's queue writer run before the next one
        due = max(due + 1 / rate, trio.current_time() - 0.1)  # at most 0.1 s of backlog


# ---------------------------------------------------------------- driver
def latencies(node: NodeProc, seconds: float) -> list[float]:
    out = []
    with ControlClient(node.socket, timeout=30) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            begun = time.perf_counter()
            client.call("status")
            out.append(time.perf_counter() - begun)
            time.sleep(PAUSE)
    return out


def counters(node: NodeProc) -> Counter[str]:
    raw = node.status()["counters"]
    assert isinstance(raw, dict)
    return Counter({k: int(v) for k, v in raw.items()})


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def phase(node: NodeProc, seconds: float) -> tuple[list[float], float]:
    """Status latencies for ``seconds``, and the node's CPU (% of a core) meanwhile."""
    proc = psutil.Process(node.proc.pid if node.proc else 0)
    cpu0, t0 = cpu_seconds(proc), time.perf_counter()
    samples = latencies(node, seconds)
    return samples, 100 * (cpu_seconds(proc) - cpu0) / (time.perf_counter() - t0)


def start_workers(target: str, workers: int, hosts: int, rate: float, duration: float) -> list[subprocess.Popen[str]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--target", target,
            "--hosts", str(hosts), "--rate", str(rate / workers), "-d", str(duration)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.nice(10)) for _ in range(workers)]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a load worker died (exit {proc.wait()})")
    return procs


def row(name: str, samples: list[float], cpu: float) -> str:
    ms = [s * 1000 for s in samples]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {percentile(ms, 99):.2f} | "
            f"{max(ms):.2f} | {cpu:.0f} |")


def outcomes(delta: Counter[str], seconds: float) -> str:
    """What the node's advert validator made of the flood, per second."""
    reached = sum(delta[o.value] for o in AdvertVerdict)
    others = [f"{o.value} {delta[o.value]} in all" for o in AdvertVerdict
              if delta[o.value] and o not in (AdvertVerdict.ACCEPTED, AdvertVerdict.RATE_LIMITED)]
    return (f"At the node {reached / seconds:.0f}/s reached the advert validator: "
            f"{delta[AdvertVerdict.ACCEPTED.value] / seconds:.0f}/s accepted, "
            f"{delta[AdvertVerdict.RATE_LIMITED.value] / seconds:.0f}/s dropped as rate_limited"
            + (f", {', '.join(others)}" if others else "") + ".")


def main(rate: float, duration: float) -> int:
    hosts_total = max(1, round(rate / PER_HOST_RATE))
    workers = min(4, hosts_total)
    hosts = -(-hosts_total // workers)
    with BenchNet() as net:
        net.add_seed()
        target = net.add("target", "provider")
        procs = start_workers(target.addr, workers, hosts, rate, duration + 1)
        try:
            quiet, quiet_cpu = phase(target, duration)
            before = counters(target)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            time.sleep(0.5)  # let the flood build up
            loaded, loaded_cpu = phase(target, duration - 0.5)
            results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
            time.sleep(0.5)  # what is in flight reaches the node
            delta = counters(target) - before
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    flood = max(r["seconds"] for r in results)
    total = Counter[str]()
    for r in results:
        total.update({k: r[k] for k in ("published", "drop_full", "drop_closed", "cpu")})
    print(f"`status` over one open control connection to a provider (seed + provider, real processes, "
          f"loopback), {duration:g} s per phase; flood from {workers} niced processes x {hosts} libp2p hosts "
          f"connected to the provider only.\n")
    print("| phase | calls | p50 ms | p99 ms | max ms | node CPU % of a core |\n|---|---:|---:|---:|---:|---:|")
    print(row("no load", quiet, quiet_cpu))
    print(row(f"flood ({total['published'] / flood:.0f} adverts/s offered)", loaded, loaded_cpu))
    reached = sum(delta[o.value] for o in AdvertVerdict)
    print(f"\nflood, per second over its {flood:.0f} s: offered {total['published'] / flood:.0f} (the load processes "
          f"used {100 * total['cpu'] / flood:.0f} % of a core). {outcomes(delta, flood)} "
          f"The other {max(0, total['published'] - reached) / flood:.0f}/s never reached the node: the senders' "
          f"gossip queues to it were full ({total['drop_full'] / flood:.0f} sends/s refused, re-sends on IWANT "
          f"included; {total['drop_closed'] / flood:.0f}/s refused for a closed stream), i.e. the node took in "
          f"gossip more slowly than it came."
          f"\np99 under flood / p99 without: **{percentile(loaded, 99) / percentile(quiet, 99):.1f}x**")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="adverts per second offered in all")
    parser.add_argument("-d", "--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--quick", action="store_true", help="6 s per phase")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.target, args.hosts, args.rate, args.duration)
        sys.exit(0)
    sys.exit(main(args.rate, 6.0 if args.quick else args.duration))
