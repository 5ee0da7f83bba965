#!/usr/bin/env python3
"""An image moved peer to peer, beside `docker save | docker load` through a pipe on the same machine.

Two real `peerd run` nodes on 127.0.0.1: a requester on the host's dockerd and a
provider on a second, empty dockerd of its own (tests/integration/dockerd.py).
The image is built in the host's dockerd only: the test busybox plus one layer
of ``--size`` MiB of random bytes. Figures, all from this run:

- baseline: ``docker save IMAGE | docker -H <second> load`` (a shell pipe), then
  the image is removed from the second engine again;
- peer to peer: ``peerd submit --image IMAGE --wait -- true`` from the requester
  (exported from its dockerd, chunked, fetched by the provider over
  /peerd/blob/1.0.0, streamed into ``docker load``, the job run), submit to result;
  "net" subtracts the same job's time once the image is there (placement, run);
  ratio = baseline / peer-to-peer time (target ≥ 0.6×);
- a second image: the first plus a 1 MiB layer (it shares the big layer), same
  measure, with the bytes the provider fetched for it.

    scripts/bench/images.py [--size MIB] [--quick] [--rounds N]

Needs root (a network namespace for the second engine) and a dockerd.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peerd.devnet import DevNet, NodeProc  # noqa: E402
from tests.integration.dockerd import BASE, Dockerd, second_dockerd  # noqa: E402

MIB = 1 << 20


class BenchNet(DevNet):
    def __init__(self, docker_url: str) -> None:
        super().__init__()
        self.docker_url = docker_url

    def config_text(self, node: NodeProc) -> str:
        text = super().config_text(node)
        if node.role == "provider":
            text += f'\n[resources]\ndocker_url = "{self.docker_url}"\n\n[storage]\nblob_quota = "0"\n'
        return text


def build(ref: str, base: str, size: int, context: Path) -> str:
    context.mkdir(parents=True)
    with (context / "data.bin").open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY data.bin /{context.name}.bin\n")
    subprocess.run(["docker", "build", "-q", "-t", ref, str(context)], check=True, capture_output=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def baseline(ref: str, engine: Dockerd) -> float:
    began = time.monotonic()
    subprocess.run(f"docker save {ref} | docker -H {engine.url} load", shell=True, check=True, capture_output=True)
    took = time.monotonic() - began
    subprocess.run(["docker", "-H", engine.url, "rmi", "-f", ref], check=True, capture_output=True)
    return took


def fetched(node: NodeProc) -> int:
    counters = node.status()["counters"]
    assert isinstance(counters, dict)
    return int(counters["data.images_fetched_bytes"])


def peer(requester: NodeProc, provider: NodeProc, ref: str) -> tuple[float, int]:
    before = fetched(provider)
    began = time.monotonic()
    out = requester.peerd("submit", "--image", ref, "--image-from-requester", "--wait", "--json", "--", "true",
                          timeout=900.0)
    took = time.monotonic() - began
    view = json.loads(out.stdout or "{}")
    if out.returncode != 0 or view.get("state") != "succeeded":
        raise SystemExit(f"submit failed: {out.stderr}\n{view}\n{provider.log_tail()}")
    return took, fetched(provider) - before


@dataclass
class Round:
    image_bytes: int
    base_s: float
    first_s: float
    first_b: int
    present_s: float
    present_b: int
    second_s: float
    second_b: int


def one_round(net: BenchNet, engine: Dockerd, size: int, tmp: Path) -> Round:
    """Fresh images (new random bytes: nobody has seen them), the baseline, then peer to peer."""
    tag = os.urandom(3).hex()
    one, two = f"peerd-bench/image-{tag}:one", f"peerd-bench/image-{tag}:two"
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    try:
        build(one, BASE, size, tmp / f"big-{tag}")
        build(two, one, MIB, tmp / f"small-{tag}")
        image_bytes = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", one],
                                         check=True, capture_output=True, text=True).stdout)
        base_s = baseline(one, engine)
        first_s, first_b = peer(requester, provider, one)
        present_s, present_b = peer(requester, provider, one)
        second_s, second_b = peer(requester, provider, two)
    finally:
        subprocess.run(["docker", "rmi", "-f", two, one], capture_output=True, check=False)
    return Round(image_bytes, base_s, first_s, first_b, present_s, present_b, second_s, second_b)


def report(r: Round, size: int) -> None:
    net_s = max(r.first_s - r.present_s, 1e-3)
    mb = r.image_bytes / 1e6
    print(f"Image of {r.image_bytes} bytes ({size // MIB} MiB random layer on {BASE}); requester on the host's "
          "dockerd, provider on a second, empty dockerd; both nodes and both engines on this machine.\n")
    print("| figure | measured | baseline (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| image moved peer to peer (submit → result) | {r.first_s:.2f} s ({mb / r.first_s:.0f} MB/s), "
          f"{r.first_b} B fetched | `docker save \\| docker load` {r.base_s:.2f} s ({mb / r.base_s:.0f} MB/s) | "
          f"{r.base_s / r.first_s:.2f}× | ≥ 0.6× |")
    print(f"| the same, net of the job without a transfer ({r.present_s:.2f} s, {r.present_b} B) | {net_s:.2f} s | "
          f"{r.base_s:.2f} s | {r.base_s / net_s:.2f}× | ≥ 0.6× |")
    print(f"| second image, sharing the big layer (+1 MiB layer) | {r.second_s:.2f} s, {r.second_b} B fetched | "
          f"first image {r.first_s:.2f} s, {r.first_b} B | {r.second_b / max(r.first_b, 1):.3f} of the bytes | "
          "only the new layer moves |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="MiB of the image's big layer (default 200)")
    parser.add_argument("--quick", action="store_true", help="a 50 MiB layer")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each with fresh images; prints the median")
    args = parser.parse_args()
    size = (50 if args.quick else args.size) * MIB
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, second_dockerd() as engine, BenchNet(engine.url) as net:
        net.add_seed()
        net.add("provider", "provider")
        net.add("requester", "requester")
        net.wait_adverts("requester", ["provider"])
        for i in range(max(args.rounds, 1)):
            rounds.append(one_round(net, engine, size, Path(tmp)))
            if args.rounds > 1:
                r = rounds[-1]
                print(f"round {i + 1}: peer to peer {r.first_s:.2f} s, baseline {r.base_s:.2f} s, "
                      f"{r.base_s / r.first_s:.2f}×, load {os.getloadavg()[0]:.2f}", flush=True)
    ordered = sorted(rounds, key=lambda r: r.base_s / r.first_s)
    if len(rounds) > 1:
        print(f"\nmedian of {len(rounds)} rounds (by ratio):\n")
    report(ordered[len(ordered) // 2], size)


if __name__ == "__main__":
    main()
