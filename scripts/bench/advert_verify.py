#!/usr/bin/env python3
"""Advert signing and checking rates, against raw Ed25519 verify in the same run.

    .venv/bin/python scripts/bench/advert_verify.py [--seconds 1.0] [--rounds 5]

Prints adverts signed per second (``signing.seal_bytes``), adverts accepted per
second (``signing.open_advert``: envelope decode, Ed25519 verify, advert
decode with every field check, binding and freshness), the raw
``Ed25519PublicKey.verify`` rate over the same bytes (the baseline), and the
ratio of the two. The target is a ratio of at least 0.85: checking an advert
should cost little beyond the signature it carries. Each figure is the best of
``--rounds`` rounds, interleaved so that machine load hits all alike, in
calls per second of CPU time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    codec,
    messages as m,  # noqa: E402
    signing,
)

NOW = 1_700_000_000.0


def sample_advert(signer: signing.Signer, n_gpus: int = 4) -> m.Advert:
    gpus = tuple(
        m.GpuOffer(uuid=f"GPU-{i}", model="NVIDIA H100 80GB HBM3", memory=80 << 30, compute_capability="9.0")
        for i in range(n_gpus)
    )
    return m.Advert(
        peer_id=signer.peer_id, seq=42, issued_at=NOW, expires_at=NOW + 120, role=m.NodeRole.PROVIDER,
        addrs=("/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"), version="0.1.0",
        cpus=32.0, memory=256 << 30, disk=2 << 40, gpus=gpus, free_cpus=24.0, free_memory=200 << 30,
        free_gpus=tuple(g.uuid for g in gpus[1::2]), queue_depth=0, running=2, price_cpu_hour=0.05, price_gpu_hour=2.5,
        docker=True, gpu_runtime=True, network=False, max_timeout=86400.0, draining=False,
    )


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU-second of ``fn`` over about ``seconds`` of this process's CPU time.

    CPU time rather than wall time, so that other processes competing for
    the cores do not count against the code measured.
    """
    batch, done, start = 64, 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(batch):
            fn()
        done += batch
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpus", type=int, default=4, help="GPUs listed in the advert")
    args = parser.parse_args(argv)

    signer = signing.Signer.from_seed(bytes(range(32)))
    advert = sample_advert(signer, args.gpus)
    data = signing.seal_bytes(advert, signer)
    env = codec.decode_as(data, m.Envelope)
    assert isinstance(env, m.Envelope)
    key = signing._key_for(signer.peer_id)  # the same cached key open_advert uses
    signed_bytes = signing.DOMAIN + env.payload
    check = signing.AdvertCheck(now=NOW + 1, last_seq=41)
    assert signing.open_advert(data, source_peer=signer.peer_id, check=check) == advert

    cases: dict[str, Callable[[], object]] = {
        "sign (seal_bytes)": lambda: signing.seal_bytes(advert, signer),
        "verify+decode (open_advert)": lambda: signing.open_advert(data, source_peer=signer.peer_id, check=check),
        "raw Ed25519 verify": lambda: key.verify(env.sig, signed_bytes),
        "decode only (codec.decode)": lambda: codec.decode(env.payload),
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(args.rounds):
        for name, fn in cases.items():
            best[name] = max(best[name], rate(fn, args.seconds))

    print(f"advert: {len(data)} bytes sealed, {len(advert.gpus)} GPUs; best of {args.rounds} x {args.seconds}s")
    for name, per_second in best.items():
        print(f"  {name:30s} {per_second:10.0f} /s  ({1e6 / per_second:7.1f} us)")
    ratio = best["verify+decode (open_advert)"] / best["raw Ed25519 verify"]
    print(f"  ratio verify+decode / raw verify: {ratio:.2f} (target >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
