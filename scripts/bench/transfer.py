#!/usr/bin/env python3
"""Chunk transfer on /peerd/blob/1.0.0 between two node processes, beside one raw libp2p stream.

Two child processes of this script, each a real P2PService on 127.0.0.1: the
*requester* holds the input in its chunk store (random 1 MiB chunks pinned for
a task) and serves it; the *provider* fetches it with ``peerd.transfer.fetch``
(``--streams``, by default ``peerd.transfer.DEFAULT_STREAMS``, as the node fetches) into its own chunk store.
The baseline is one raw libp2p stream between the same two processes carrying
the same number of bytes (the requester writes a 1 MiB buffer over and over,
the provider reads to the end). The throughput is measured in ``--rounds``
rounds that alternate with the baseline (raw, fetch, raw, fetch, …, raw; the
provider drops the fetched chunks between rounds): each round's ratio is its
fetch against the mean of the raw runs just before and after it, and the
figure is the median round. Figures:

- throughput of the input requester→provider vs the raw stream (target ≥ 0.7×,
  the median of the rounds);
- the same input fetched a second time: bytes moved vs the input (target < 1 %);
- RSS growth of each process during a transfer of ``--rss-size`` (target < 64 MB
  at 1 GiB), sampled every 20 ms, from just before the transfer to its peak;
- CPU seconds per GiB on each side (user + system, from getrusage).

    scripts/bench/transfer.py [--size MIB] [--rss-size MIB] [--rounds N] [--streams N] [--quick | --full]

``--full`` is the issue's setting: 256 MiB for throughput and 1 GiB for RSS.
The default (64 MiB, 256 MiB) fits a small shared machine; ``--quick`` is 32 / 64.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peerd.config import NetworkConfig  # noqa: E402
from peerd.data.blobstore import BlockingChunkStore, ChunkStore  # noqa: E402
from peerd.data.transfer import DEFAULT_STREAMS, blob_opener, fetch, register_blob_protocol  # noqa: E402
from peerd.p2p.service import P2PService  # noqa: E402
from peerd.p2p.streams import Stream  # noqa: E402
from protocol.signing import Signer  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
RAW = "/bench/raw/1.0.0"
ROUNDS = 3
SAMPLE = 0.02
NET = NetworkConfig(io_timeout=60.0, connect_timeout=10.0)


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def loop_cpu() -> float:
    """CPU seconds of the calling thread: called from trio's thread, the event loop's share alone."""
    return cpu(resource.RUSAGE_THREAD)


class Meter:
    """Peak RSS since the last mark, sampled in the background."""

    def __init__(self) -> None:
        self.mark()

    def mark(self) -> None:
        self.base = self.peak = rss()
        self.cpu, self.loop = cpu(), loop_cpu()

    def stats(self) -> dict[str, float]:
        return {"rss_base": self.base, "rss_peak": max(self.peak, rss()), "cpu": cpu() - self.cpu,
                "loop": loop_cpu() - self.loop}

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await trio.sleep(SAMPLE)


# ---------------------------------------------------------------- children
def fill_store(root: Path, tasks: dict[str, int]) -> dict[str, list[str]]:
    """Random 1 MiB chunks pinned per task; returns the digests (hex) of each task."""
    files = BlockingChunkStore.open(root)
    out: dict[str, list[str]] = {}
    try:
        for task, size in tasks.items():
            digests = []
            for _ in range(size // MIB):
                data = os.urandom(MIB)
                digest = hashlib.sha256(data).digest()
                files.pin(task, [digest])
                files.put(digest, data)
                digests.append(digest.hex())
            out[task] = digests
    finally:
        files.close()
    return out


async def requester(args: argparse.Namespace) -> None:
    tasks = json.loads(args.tasks)
    digests = await trio.to_thread.run_sync(fill_store, Path(args.store), tasks)
    store = await ChunkStore.open(Path(args.store))
    meter = Meter()
    service = P2PService(Signer.generate(), ["/ip4/127.0.0.1/tcp/0"], [], seed=False, net=NET, advert_source=None)

    async def anyone(peer: str, task: str) -> bool:  # the bench stands in for the lease check
        return task in tasks

    register_blob_protocol(service, store, anyone, timeout=NET.io_timeout)
    buffer = os.urandom(MIB)

    async def raw(stream: Stream) -> None:
        size = int((await stream.read_exactly(16)).decode())
        for _ in range(size // MIB):
            await stream.write(buffer)

    service.set_stream_handler(RAW, raw)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        nursery.start_soon(meter.run)
        emit(event="ready", peer_id=service.peer_id, addrs=service.listen_addrs(), digests=digests)
        await commands(meter, nursery.cancel_scope, {})


async def provider(args: argparse.Namespace) -> None:
    store = await ChunkStore.open(Path(args.store))
    meter = Meter()
    service = P2PService(Signer.generate(), ["/ip4/127.0.0.1/tcp/0"], [], seed=False, net=NET, advert_source=None)
    peer, addrs = args.peer, json.loads(args.addrs)
    digests: dict[str, list[bytes]] = {t: [bytes.fromhex(d) for d in ds] for t, ds in json.loads(args.tasks).items()}

    async def raw(size: int) -> dict[str, object]:
        begun = time.perf_counter()
        got = 0
        async with service.open_stream(peer, RAW, addrs) as stream:
            await stream.write(b"%016d" % size)
            while got < size:
                got += len(await stream.read(1 << 20))
        return {"seconds": time.perf_counter() - begun, "bytes": got}

    async def blob(task: str) -> dict[str, object]:
        begun = time.perf_counter()
        report = await fetch(blob_opener(service, {peer: addrs}), [peer], task, digests[task], store,
                             streams=args.streams, timeout=NET.io_timeout)
        return {"seconds": time.perf_counter() - begun, "bytes": report.wire_bytes, "fetched": report.fetched,
                "retries": report.retries}

    async def forget(task: str) -> dict[str, object]:  # the next round fetches everything again
        await store.release(task)
        return {"removed": (await store.gc()).removed}

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        nursery.start_soon(meter.run)
        emit(event="ready", peer_id=service.peer_id)
        await commands(meter, nursery.cancel_scope, {"raw": lambda a: raw(int(a)), "fetch": blob,
                                                      "forget": forget})


async def commands(meter: Meter, cancel: trio.CancelScope, actions: dict) -> None:  # type: ignore[type-arg]
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while chunk := await stdin.receive_some(4096):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "mark":
                meter.mark()
                emit(event="marked")
            elif cmd == "stats":
                emit(event="stats", **meter.stats())
            elif cmd in actions:
                emit(event=cmd, **(await actions[cmd](arg)))
            elif cmd == "quit":
                cancel.cancel()
                return
    cancel.cancel()


# ---------------------------------------------------------------- driver
class Child:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)

    def ask(self, line: str | None) -> dict:  # type: ignore[type-arg]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"child exited ({self.proc.wait()})")
        return json.loads(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def measured(req: Child, prov: Child, command: str) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    req.ask("mark")
    prov.ask("mark")
    result = prov.ask(command)
    return result, req.ask("stats"), prov.ask("stats")


def mib_s(nbytes: float, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB for throughput and the second fetch")
    parser.add_argument("--rss-size", type=int, default=256, help="MiB for the RSS run")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="fetches alternating with raw runs")
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS, help="blob streams per fetch")
    parser.add_argument("--quick", action="store_true", help="32 MiB and 64 MiB")
    parser.add_argument("--full", action="store_true", help="the issue's setting: 256 MiB and 1 GiB")
    parser.add_argument("--role", choices=["requester", "provider"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--addrs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "requester":
        trio.run(requester, args)
        return 0
    if args.role == "provider":
        trio.run(provider, args)
        return 0
    size, rss_size = (256, 1024) if args.full else (32, 64) if args.quick else (args.size, args.rss_size)
    rounds = max(args.rounds, 1)
    tasks = {"bench-throughput": size * MIB, "bench-rss": rss_size * MIB}
    work = Path(tempfile.mkdtemp(prefix="peerd-bench-transfer-"))
    req = prov = None
    raws: list[tuple[dict, dict, dict]] = []  # type: ignore[type-arg]
    blobs: list[tuple[dict, dict, dict]] = []  # type: ignore[type-arg]
    try:
        req = Child(["--role", "requester", "--store", str(work / "requester"), "--tasks", json.dumps(tasks)])
        ready = req.ask(None)
        prov = Child(["--role", "provider", "--store", str(work / "provider"), "--peer", ready["peer_id"],
                      "--addrs", json.dumps(ready["addrs"]), "--tasks", json.dumps(ready["digests"]),
                      "--streams", str(args.streams)])
        prov.ask(None)
        prov.ask(f"raw {MIB}")  # connect and warm up
        for round_ in range(rounds):
            raws.append(measured(req, prov, f"raw {size * MIB}"))
            blobs.append(measured(req, prov, "fetch bench-throughput"))
            if round_ < rounds - 1:
                prov.ask("forget bench-throughput")
        raws.append(measured(req, prov, f"raw {size * MIB}"))
        again, _, _ = measured(req, prov, "fetch bench-throughput")
        big, big_req, big_prov = measured(req, prov, "fetch bench-rss")
    finally:
        for child in (prov, req):
            if child is not None:
                child.stop()
        shutil.rmtree(work, ignore_errors=True)

    raw_rates = [mib_s(r["bytes"], r["seconds"]) for r, _, _ in raws]
    blob_rates = [mib_s(size * MIB, b["seconds"]) for b, _, _ in blobs]
    ratios = [rate / ((raw_rates[i] + raw_rates[i + 1]) / 2) for i, rate in enumerate(blob_rates)]
    mid = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]  # the median round (upper for even)
    blob, blob_req, blob_prov = blobs[mid]
    _, raw_req, raw_prov = raws[mid]
    blob_rate, raw_rate = blob_rates[mid], (raw_rates[mid] + raw_rates[mid + 1]) / 2
    moved = again["bytes"] / (size * MIB)
    grow_req = (big_req["rss_peak"] - big_req["rss_base"]) / MIB
    grow_prov = (big_prov["rss_peak"] - big_prov["rss_base"]) / MIB
    gib = size * MIB / GIB
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"Two processes on 127.0.0.1 (Noise + yamux), {args.streams} blob streams, 1 MiB chunks; "
          f"input {size} MiB, RSS run {rss_size} MiB; {rounds} rounds; load average {load}.\n")
    print("| figure | measured | baseline (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| throughput requester→provider (median round) | {blob_rate:.1f} MiB/s | raw stream {raw_rate:.1f} MiB/s "
          f"({raw_rates[mid]:.1f} before, {raw_rates[mid + 1]:.1f} after) | {ratios[mid]:.2f}× | ≥ 0.7× |")
    print(f"| same input again: bytes moved | {again['bytes']} B ({again['fetched']} chunks) | input {size * MIB} B "
          f"| {moved * 100:.3f} % | < 1 % |")
    print(f"| RSS growth during {rss_size} MiB, requester (serving) | {grow_req:.1f} MB "
          f"| RSS before {big_req['rss_base'] / MIB:.0f} MB | | < 64 MB at 1 GiB |")
    print(f"| RSS growth during {rss_size} MiB, provider (fetching) | {grow_prov:.1f} MB "
          f"| RSS before {big_prov['rss_base'] / MIB:.0f} MB | | < 64 MB at 1 GiB |")
    print(f"| CPU s/GiB, requester (serving) | {blob_req['cpu'] / gib:.2f} | raw stream {raw_req['cpu'] / gib:.2f} "
          f"| {blob_req['cpu'] / max(raw_req['cpu'], 1e-9):.2f}× | |")
    print(f"| CPU s/GiB, provider (fetching) | {blob_prov['cpu'] / gib:.2f} | raw stream {raw_prov['cpu'] / gib:.2f} "
          f"| {blob_prov['cpu'] / max(raw_prov['cpu'], 1e-9):.2f}× | |")
    print(f"| event-loop thread CPU s/GiB, requester | {blob_req['loop'] / gib:.2f} "
          f"| raw stream {raw_req['loop'] / gib:.2f} | {blob_req['loop'] / max(raw_req['loop'], 1e-9):.2f}× | |")
    print(f"| event-loop thread CPU s/GiB, provider | {blob_prov['loop'] / gib:.2f} "
          f"| raw stream {raw_prov['loop'] / gib:.2f} | {blob_prov['loop'] / max(raw_prov['loop'], 1e-9):.2f}× | |")
    print("\nRounds (raw MiB/s, fetch MiB/s, ratio): " + "; ".join(
        f"{raw_rates[i]:.1f} / {blob_rates[i]:.1f} / {ratios[i]:.2f}×" for i in range(rounds))
        + f"; final raw {raw_rates[-1]:.1f}.")
    print(f"RSS run: {big['fetched']} chunks in {big['seconds']:.1f} s "
          f"({mib_s(rss_size * MIB, big['seconds']):.1f} MiB/s); retries: "
          f"{sum(b['retries'] for b, _, _ in blobs)} + {big['retries']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
