#!/usr/bin/env python3
"""Job data and jobs through a relay vs direct, between nodes behind home routers (root: netns).

One test network (tests/integration/netns.py): a seed that relays, two home
routers that drop unsolicited connections (so DCUtR hole punching works), a
node behind each. The node behind "home" serves ``--size`` MiB of job data;
the node behind "office" fetches it (4 blob streams) twice into empty stores:

- through the relay (``[relay] allow_data = true``: the streams stay on the
  circuit the first dial made);
- direct (the default: ``try_direct`` hole-punches before the data moves).

Round 1 includes making the connection (the relayed dial; the relayed dial
plus hole punching); round 2 is the transfer alone, on the same connection.
Beside it, the same job (``echo``) submitted by a public requester to a
provider behind "home" (task stream through the relay) and to a public one.

    sudo scripts/bench/relay.py [--size MIB] [--jobs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peerd.devnet import wait_for  # noqa: E402
from tests.integration.cli import submit  # noqa: E402
from tests.integration.netns import NODE_PORT, NetnsDevNet, netns_devnet  # noqa: E402

MIB = 1 << 20
BLOBPEER = [sys.executable, "-m", "tests.integration.blobpeer"]


def serve(net: NetnsDevNet, seeds: list[str], size: int) -> subprocess.Popen[bytes]:
    host = net.network.add_host("home-server", behind="home")
    log = (net.root / "home-server.log").open("wb")
    proc = host.popen([*BLOBPEER, "serve", "--listen", f"/ip4/{host.addr}/tcp/{NODE_PORT}", "--bootstrap", *seeds,
                       "--size", str(size), "--store", str(net.root / "served"),
                       "--out", str(net.root / "home-server.json")], stdout=log, stderr=log)
    wait_for("the server to be relayed", lambda: (net.root / "home-server.json").exists(), 90)
    return proc


def fetch(net: NetnsDevNet, seeds: list[str], name: str, *, allow_data: bool) -> dict[str, object]:
    host = net.network.add_host(name, behind="office")
    out = net.root / f"{name}.json"
    done = subprocess.run(
        [*host.exec_prefix(), *BLOBPEER, "fetch", "--listen", f"/ip4/{host.addr}/tcp/{NODE_PORT}",
         "--bootstrap", *seeds, "--peer", str(net.root / "home-server.json"), "--store", str(net.root / name),
         "--out", str(out), "--rounds", "2", *(["--allow-data"] if allow_data else [])],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.read_text())
    return result


def path(result: dict[str, object]) -> str:
    paths = result["paths"]
    assert isinstance(paths, list)
    return "none" if not paths else "relay" if all(paths) else "direct" if not any(paths) else "mixed"


def job_times(net: NetnsDevNet, requester: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        begun = time.perf_counter()
        view = submit(net.nodes[requester], f"echo job {i}", wait=True)
        if view["state"] != "succeeded":
            raise SystemExit(f"job {i} from {requester}: {view}")
        out.append(time.perf_counter() - begun)
    return out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB of job data")
    parser.add_argument("--jobs", type=int, default=5, help="jobs per path")
    parser.add_argument("--quick", action="store_true", help="16 MiB, 3 jobs")
    args = parser.parse_args()
    size, jobs = (16, 3) if args.quick else (args.size, args.jobs)
    os.environ["PYTHONPATH"] = str(ROOT)  # the node processes import this tree
    with netns_devnet() as net:
        seed = net.add_seed("seed-1")
        seeds = [seed.addr]
        net.network.add_router("home")
        net.network.add_router("office")
        server = serve(net, seeds, size)
        try:
            relayed = fetch(net, seeds, "office-relayed", allow_data=True)
            direct = fetch(net, seeds, "office-direct", allow_data=False)
        finally:
            server.kill()
            server.wait()
        net.add("home-provider", "provider", bootstrap=seeds, behind="home")
        net.add("requester", "requester", bootstrap=seeds)
        wait_for("the requester to know the relayed provider", lambda: any(
            "/p2p-circuit/" in a for p in json.loads(net.nodes["requester"].peerd("--json", "peers").stdout)
            for a in p["addrs"]), 60)
        via_relay = job_times(net, "requester", jobs)
        net.stop("home-provider")
        net.add("public-provider", "provider", bootstrap=seeds)
        wait_for("the requester to know the public provider", lambda: any(
            p["peer_id"] == net.nodes["public-provider"].status()["peer_id"]
            for p in json.loads(net.nodes["requester"].peerd("--json", "peers").stdout)), 60)
        direct_jobs = job_times(net, "requester", jobs)

    def rate(result: dict[str, object], n: int) -> float:
        rounds = result["rounds"]
        assert isinstance(rounds, list)
        return size / float(rounds[n]["seconds"])

    def secs(result: dict[str, object], n: int) -> float:
        rounds = result["rounds"]
        assert isinstance(rounds, list)
        return float(rounds[n]["seconds"])

    print(f"{size} MiB of job data, home NAT → office NAT, 4 blob streams; {jobs} `echo` jobs per path; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}.\n")
    print("| | through the relay | direct (hole punched) |")
    print("|---|---|---|")
    print(f"| path the blob streams took | {path(relayed)} | {path(direct)} |")
    print(f"| fetch 1 (with connection setup) | {secs(relayed, 0):.2f} s | {secs(direct, 0):.2f} s "
          f"(hole punching included) |")
    print(f"| fetch 2 (transfer alone) | {secs(relayed, 1):.2f} s, {rate(relayed, 1):.1f} MiB/s "
          f"| {secs(direct, 1):.2f} s, {rate(direct, 1):.1f} MiB/s |")
    print(f"| direct / relay throughput | | {rate(direct, 1) / rate(relayed, 1):.2f}× |")
    print(f"| job submit → succeeded, median of {jobs} | {median(via_relay):.2f} s (provider behind NAT, "
          f"task stream through the relay) | {median(direct_jobs):.2f} s (public provider) |")


if __name__ == "__main__":
    main()
