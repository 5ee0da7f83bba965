#!/usr/bin/env python3
"""All-reduce-like exchange between 2 containers: through the gang overlay (WireGuard) vs the docker bridge.

Two ranks, each a DockerExecutor job on this host's dockerd, send ``--mib`` MiB to each other at the same
time (busybox ``dd | nc``, each rank also receiving with ``nc -l``), as the ring all-reduce of 2 ranks does.
The same two containers run twice: once as gang members (``RunSpec.overlay``: each in its own network
holder with only lo and a WireGuard interface, the underlay UDP over 127.0.0.1, wireguard-go in userspace
where the kernel has no module), once on the plain docker bridge (``network=True``). Each rank times its own
send with /proc/uptime (10 ms resolution; sizes are chosen so a transfer takes seconds). Printed: MB/s per
direction and both together, the overlay/bridge ratio, and the CPU seconds the wireguard-go processes used
(user + system, read from /proc while the ranks still run). Root (WireGuard interfaces, namespaces).

    .venv/bin/python scripts/bench/overlay.py [--mib 256] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peerd.executor import DockerExecutor, RunOutcomeState  # noqa: E402
from peerd.executor.contract import InputMount, OverlayPeer, OverlaySpec, RunSpec  # noqa: E402
from peerd.executor.policy import ProviderPolicy  # noqa: E402
from peerd.overlay.commands import node_prefix  # noqa: E402
from peerd.overlay.host import probe  # noqa: E402
from peerd.overlay.keys import generate_keys  # noqa: E402
from peerd.overlay.wireguard import wireguard_go_processes  # noqa: E402

MIB = 1 << 20
PORT = 5000
BLOCK = 65536
# Receive in the background (stdin held open: busybox nc ends at EOF on stdin); wait (bounded) for
# the peer's address file and for its listener; send; wait until all was received; print; stay up
# until stopped so the benchmark can read wireguard-go's CPU time before the overlay goes.
RANK_SCRIPT = """
(sleep 3600 | nc -l -p {port} | wc -c > /tmp/got) &
i=0; while [ ! -s /peer/ip ]; do i=$((i+1)); [ $i -lt 2000 ] || exit 3; sleep 0.01; done
peer=$(cat /peer/ip)
i=0
while :; do
  t0=$(cut -d' ' -f1 /proc/uptime)
  if dd if=/dev/zero bs={block} count={count} 2>/dev/null | nc $peer {port}; then break; fi
  i=$((i+1)); [ $i -lt 400 ] || exit 4; sleep 0.02
done
i=0; while [ ! -s /tmp/got ]; do i=$((i+1)); [ $i -lt 60000 ] || exit 5; sleep 0.01; done
t2=$(cut -d' ' -f1 /proc/uptime)
echo "sent $t0 got $t2 $(cat /tmp/got)"
sleep 3600
"""


@dataclass(frozen=True)
class Round:
    seconds: tuple[float, float]  # each direction: the sender's start to the receiver's last byte
    both_seconds: float  # first start to last byte
    wg_cpu: float  # wireguard-go user+system seconds (0 on the bridge)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def overlays() -> list[OverlaySpec]:
    keys = [generate_keys(), generate_keys()]
    ports = [free_udp_port(), free_udp_port()]
    return [
        OverlaySpec(address=f"10.99.0.{r + 1}/24", private_key=keys[r].private_key, listen_port=ports[r],
                    peers=(OverlayPeer(keys[1 - r].public_key, f"127.0.0.1:{ports[1 - r]}", f"10.99.0.{2 - r}"),))
        for r in range(2)
    ]


def rank_spec(task_id: str, image: str, count: int, peer_dir: Path, overlay: OverlaySpec | None) -> RunSpec:
    return RunSpec(
        task_id=task_id, image=image, command=("sh", "-c", RANK_SCRIPT.format(port=PORT, block=BLOCK, count=count)),
        cpus=float(os.cpu_count() or 1), memory=128 * MIB, timeout=600.0, network=overlay is None,
        overlay=overlay, inputs=(InputMount(peer_dir, "/peer"),),
    )


def wireguard_cpu(prefix: str) -> float:
    total = 0.0
    for pid, name in wireguard_go_processes().items():
        if name.startswith(prefix):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


async def bridge_ip(task_id: str, node_id: str) -> str:
    done = await trio.run_process(
        ["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"peerd-{node_id}-{task_id}"],
        capture_stdout=True,
    )
    return done.stdout.decode().strip()


async def wait_sent(executor: DockerExecutor, task_id: str, expected: int) -> tuple[float, float]:
    """(send start, all received) in the rank's uptime clock, the host's."""
    async for _stream, data in executor.logs(task_id):
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("sent "):
                _, t0, _, t2, got = line.split()
                if int(got) != expected:
                    raise SystemExit(f"{task_id} received {got} bytes, not {expected}")
                return float(t0), float(t2)
    raise SystemExit(f"{task_id} ended without sending")


async def one_round(executor: DockerExecutor, image: str, count: int, work: Path, tag: str, overlay: bool) -> Round:
    specs = overlays() if overlay else [None, None]
    ids = [f"{tag}-r{r}" for r in range(2)]
    dirs = [work / f"{i}-peer" for i in ids]
    for d in dirs:
        d.mkdir(mode=0o755)
    for r in range(2):
        await executor.start(rank_spec(ids[r], image, count, dirs[r], specs[r]))
    for r in range(2):
        ip = f"10.99.0.{2 - r}" if overlay else await bridge_ip(ids[1 - r], executor.node_id)
        tmp = dirs[r] / "ip.tmp"
        tmp.write_text(ip + "\n")
        tmp.chmod(0o644)
        tmp.rename(dirs[r] / "ip")
    times: list[tuple[float, float]] = [(0.0, 0.0), (0.0, 0.0)]

    async def watch(r: int) -> None:
        times[r] = await wait_sent(executor, ids[r], count * BLOCK)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for r in range(2):
                nursery.start_soon(watch, r)
    cpu = wireguard_cpu(node_prefix(executor.node_id)) if overlay else 0.0
    for task_id in ids:
        await executor.stop(task_id, "measured")
        outcome = await executor.wait(task_id)
        if outcome.state is not RunOutcomeState.CANCELLED:
            raise SystemExit(f"{task_id}: {outcome.state} {outcome.detail} {outcome.stderr[-500:]!r}")
    seconds = (max(times[1][1] - times[0][0], 0.01), max(times[0][1] - times[1][0], 0.01))
    both = max(0.01, max(t[1] for t in times) - min(t[0] for t in times))
    return Round(seconds, both, cpu)


def summary(label: str, rounds: list[Round], mb: float) -> tuple[float, str]:
    per_dir = [mb / s for r in rounds for s in r.seconds]
    both = [2 * mb / r.both_seconds for r in rounds]
    cpu = statistics.median(r.wg_cpu for r in rounds)
    line = (f"| {label} | {statistics.median(per_dir):8.1f} | {min(per_dir):8.1f} | {max(per_dir):8.1f} | "
            f"{statistics.median(both):8.1f} | {cpu:6.2f} | {cpu / (2 * mb / 1000):6.2f} |")
    return statistics.median(both), line


async def main(mib: int, rounds: int, image: str) -> None:
    found = probe()
    if not found.ok:
        raise SystemExit(f"this host cannot make overlays: {found.detail}")
    count = mib * MIB // BLOCK
    mb = count * BLOCK / 1e6
    results: dict[str, list[Round]] = {"overlay": [], "bridge": []}
    with tempfile.TemporaryDirectory(prefix="peerd-bench-overlay-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        executor = DockerExecutor(f"bench{uuid.uuid4().hex[:8]}", work / "jobs",
                                  policy=ProviderPolicy(allow_network=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.run)
            for i in range(rounds):  # alternating, so drift in the machine's load hits both alike
                for kind in ("overlay", "bridge"):
                    results[kind].append(await one_round(executor, image, count, work, f"{kind}{i}", kind == "overlay"))
            nursery.cancel_scope.cancel()
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores ({platform.processor() or platform.machine()}), "
          f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB; WireGuard: {found.detail}")
    print(f"{rounds} round(s), alternating; each rank sends {mb:.0f} MB to the other while receiving as much\n")
    print("| path | MB/s per direction (median) | min | max | MB/s both ways together | wireguard-go CPU s "
          "| CPU s per GB moved |")
    print("|---|---|---|---|---|---|---|")
    overlay_both, overlay_line = summary("overlay (WireGuard)", results["overlay"], mb)
    bridge_both, bridge_line = summary("docker bridge", results["bridge"], mb)
    print(overlay_line)
    print(bridge_line)
    print(f"\nratio overlay/bridge (both ways together): {overlay_both / bridge_both:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB each rank sends")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 round")
    parser.add_argument("--image", default=os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1"))
    args = parser.parse_args()
    trio.run(main, 64 if args.quick else args.mib, 1 if args.quick else args.rounds, args.image)
