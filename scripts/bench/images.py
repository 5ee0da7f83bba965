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

    scripts/bench/images.py [--size MIB] [--quick]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="MiB of the image's big layer (default 200)")
    parser.add_argument("--quick", action="store_true", help="a 50 MiB layer")
    args = parser.parse_args()
    size = (50 if args.quick else args.size) * MIB
    tag = os.urandom(3).hex()
    one, two = f"peerd-bench/image-{tag}:one", f"peerd-bench/image-{tag}:two"
    with tempfile.TemporaryDirectory() as tmp, second_dockerd() as engine:
        try:
            build(one, BASE, size, Path(tmp) / "big")
            build(two, one, MIB, Path(tmp) / "small")
            image_bytes = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", one],
                                             check=True, capture_output=True, text=True).stdout)
            base_s = baseline(one, engine)
            with BenchNet(engine.url) as net:
                net.add_seed()
                provider = net.add("provider", "provider")
                requester = net.add("requester", "requester")
                net.wait_adverts("requester", ["provider"])
                first_s, first_b = peer(requester, provider, one)
                present_s, present_b = peer(requester, provider, one)
                second_s, second_b = peer(requester, provider, two)
        finally:
            subprocess.run(["docker", "rmi", "-f", two, one], capture_output=True, check=False)
    net_s = max(first_s - present_s, 1e-3)
    mb = image_bytes / 1e6
    print(f"Image of {image_bytes} bytes ({size // MIB} MiB random layer on {BASE}); requester on the host's "
          "dockerd, provider on a second, empty dockerd; both nodes and both engines on this machine.\n")
    print("| figure | measured | baseline (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| image moved peer to peer (submit → result) | {first_s:.2f} s ({mb / first_s:.0f} MB/s), "
          f"{first_b} B fetched | `docker save \\| docker load` {base_s:.2f} s ({mb / base_s:.0f} MB/s) | "
          f"{base_s / first_s:.2f}× | ≥ 0.6× |")
    print(f"| the same, net of the job without a transfer ({present_s:.2f} s, {present_b} B) | {net_s:.2f} s | "
          f"{base_s:.2f} s | {base_s / net_s:.2f}× | ≥ 0.6× |")
    print(f"| second image, sharing the big layer (+1 MiB layer) | {second_s:.2f} s, {second_b} B fetched | "
          f"first image {first_s:.2f} s, {first_b} B | {second_b / max(first_b, 1):.3f} of the bytes | "
          "only the new layer moves |")


if __name__ == "__main__":
    main()
