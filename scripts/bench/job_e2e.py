#!/usr/bin/env python3
"""Benchmark: submit -> result of a trivial job through the network vs a bare `docker run`.

A seed, one provider and one requester run as real ``peerd run`` processes
(``peerd.devnet``) on 127.0.0.1. The requester gets ``true`` in
PEERD_TEST_IMAGE (default peerd-test/busybox:1) through the blocking
``ControlClient`` (``submit``, then ``wait``): discovery is done before timing,
so each figure is placement (offer, co-signed lease), the container on the
provider's dockerd, the result and the co-signed receipt. The baseline is
``docker run --rm --network none IMAGE true``, alternating with ours, N runs
each after one warm-up of each. Prints medians, p90 and the ratio of medians
(target <= 1.5).

    .venv/bin/python scripts/bench/job_e2e.py [-n 15] [--quick]

This module also holds what the sibling benchmarks share (``BenchNet``, a
DevNet whose nodes take config overrides; ``stats_row``; ``docker_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence

from peerd.control.client import ControlClient
from peerd.control.wire import to_value
from peerd.devnet import FAST_CONFIG, DevNet, NodeProc
from protocol.messages import JobSpec

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
Overrides = Mapping[str, Mapping[str, object]]


# ---------------------------------------------------------------- shared helpers
def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(data: Mapping[str, Mapping[str, object]]) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()) + "\n"
                   for section, body in data.items())


class BenchNet(DevNet):
    """A DevNet whose next ``add`` may override config keys (section -> key -> value).

    ``base`` replaces DevNet's fast test settings wholesale when given
    ("defaults": peerd's own defaults, i.e. only node addresses are written).
    """

    def __init__(self, base: str = "fast") -> None:
        super().__init__()
        self.base = base
        self.overrides: dict[str, Overrides] = {}

    def add_with(self, name: str, role: str, overrides: Overrides) -> NodeProc:
        self.overrides[name] = overrides
        return self.add(name, role)

    def _write_config(self, node: NodeProc) -> None:
        text = FAST_CONFIG.format(role="provider" if node.role == "seed" else node.role, port=node.port,
                                  bootstrap=", ".join(json.dumps(b) for b in node.bootstrap))
        data: dict[str, dict[str, object]] = {k: dict(v) for k, v in tomllib.loads(text).items()}
        if self.base == "defaults":
            data = {"node": data["node"]}
        for section, body in self.overrides.get(node.name, {}).items():
            data.setdefault(section, {}).update(body)
        (node.home / "config.toml").write_text(toml_text(data))

    def close(self) -> None:
        """Stop every node at once (DevNet stops them one by one), then DevNet's clean-up."""
        running = [n.proc for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # DevNet.close signals it again, then kills it
        super().close()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def stats_row(name: str, seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {percentile(ms, 90):.1f} | "
            f"{min(ms):.1f} | {max(ms):.1f} |")


STATS_HEADER = "| what | n | median ms | p90 ms | min ms | max ms |\n|---|---:|---:|---:|---:|---:|"


def docker_run(image: str, *extra: str) -> float:
    """Wall seconds of one `docker run --rm --network none [extra] IMAGE true`."""
    begun = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", *extra, image, "true"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - begun


def trivial_spec(image: str, *, cpus: float = 1.0, memory: int = 64 << 20) -> JobSpec:
    return JobSpec(image=image, command=("true",), cpus=cpus, memory=memory, timeout=60.0)


def submit_and_wait(client: ControlClient, spec: JobSpec) -> dict[str, object]:
    submitted = client.call("submit", {"spec": to_value(spec), "local": False})
    assert isinstance(submitted, dict)
    view = client.call("wait", {"task_id": submitted["task_id"]}, no_timeout=True)
    assert isinstance(view, dict)
    return view


def start_network(base: str = "fast", provider: Overrides | None = None) -> BenchNet:
    """Seed + provider + requester, the requester holding the provider's advert."""
    net = BenchNet(base)
    try:
        net.add_seed()
        net.add_with("provider", "provider", provider or {})
        net.add("requester", "requester")
        net.wait_adverts("requester", ["provider"])
    except BaseException:
        net.close()
        raise
    return net


# ---------------------------------------------------------------- this benchmark
def via_network(requester: NodeProc, image: str) -> float:
    with ControlClient(requester.socket, timeout=30) as client:
        begun = time.perf_counter()
        view = submit_and_wait(client, trivial_spec(image))
        elapsed = time.perf_counter() - begun
    if view.get("state") != "succeeded":
        raise SystemExit(f"network job did not succeed: {view.get('state')}: {view.get('detail')}")
    return elapsed


def main(runs: int, image: str) -> int:
    started = time.perf_counter()
    with start_network() as net:
        ready = time.perf_counter() - started
        requester = net.nodes["requester"]
        via_network(requester, image)  # warm-up: connections, image lookup
        docker_run(image)
        ours: list[float] = []
        bare: list[float] = []
        for _ in range(runs):
            ours.append(via_network(requester, image))
            bare.append(docker_run(image))
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"Trivial job (`true` in {image}), submit -> result through seed + provider + requester "
          f"(real processes, loopback; network up in {ready:.1f} s), vs bare docker; alternating, N={runs} each.\n")
    print(STATS_HEADER)
    print(stats_row("peerd submit+wait (ControlClient)", ours))
    print(stats_row("docker run --rm --network none", bare))
    print(f"\nratio of medians peerd/docker: **{ratio:.2f}** (target <= 1.5)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 runs each")
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args()
    sys.exit(main(5 if args.quick else args.runs, args.image))
