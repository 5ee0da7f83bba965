#!/usr/bin/env python3
"""Placement ranking time with 1,000 adverts in the peer table, with and without reputation.

    .venv/bin/python scripts/bench/placement.py [--adverts 1000] [--rounds 5] [--seconds 0.5]

Fills a real ``PeerTable`` with ``--adverts`` signed provider adverts (varied
prices and free capacity), gives half of those providers a history in a
``ReputationBook`` (completions, some losses and disputes), and times
``PeerTable.candidates`` — what placement asks for every attempt — without
reputation (the baseline: fit, then price) and with it (fit, then price
adjusted by reputation, tiers, one exploration draw per ranking). Prints the
mean time per ranking of each (best of ``--rounds``, CPU time) and the
overhead. Target: reputation adds < 10 %.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from peerd.market.peertable import PeerTable, TableLimits  # noqa: E402
from peerd.market.reputation import Event, Observation, tally  # noqa: E402
from peerd.market.reputation_book import ReputationBook  # noqa: E402
from peerd.state.store import Store  # noqa: E402
from protocol import messages as m, signing  # noqa: E402

NOW = 1_700_000_000.0
SPEC = m.JobSpec(image="busybox", command=("true",), cpus=2.0, memory=1 << 30)


def advert(signer: signing.Signer, rng: random.Random) -> m.Advert:
    cpus = float(rng.choice((4, 8, 16, 32)))
    return m.Advert(
        peer_id=signer.peer_id, seq=1, issued_at=NOW, expires_at=NOW + 120, role=m.NodeRole.PROVIDER,
        addrs=("/ip4/127.0.0.1/tcp/4001",), version="0.1.0", cpus=cpus, memory=64 << 30, disk=1 << 40,
        gpus=(), free_cpus=cpus * rng.random(), free_memory=rng.randint(1, 64) << 30, free_gpus=(),
        queue_depth=rng.randint(0, 3), running=rng.randint(0, 4), price_cpu_hour=round(rng.uniform(0.01, 0.1), 4),
        price_gpu_hour=0.0, docker=True, gpu_runtime=False, network=False, max_timeout=86400.0, draining=False,
    )


def history(peer_ids: list[str], rng: random.Random) -> list[Observation]:
    found: list[Observation] = []
    for pid in peer_ids[: len(peer_ids) // 2]:
        for _ in range(rng.randint(1, 20)):
            event = rng.choices((Event.COMPLETED, Event.LOST, Event.DISPUTED, Event.VERIFIED), (90, 4, 2, 4))[0]
            found.append(Observation(pid, event, NOW - rng.uniform(0, 30 * 86400)))
    return found


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Mean CPU seconds per call over about ``seconds`` of CPU time."""
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        fn()
        done += 1
    return elapsed / done


async def open_book(path: Path) -> tuple[Store, ReputationBook]:
    store = await Store.open(path)
    return store, ReputationBook(store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adverts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args(argv)
    rng = random.Random(1)
    table = PeerTable("self", TableLimits(max_entries=args.adverts + 10))
    signers = [signing.Signer.from_seed(i.to_bytes(32, "big")) for i in range(1, args.adverts + 1)]
    for signer in signers:
        table.ingest(signing.seal_bytes(advert(signer, rng), signer), source=None, now=NOW)
    with tempfile.TemporaryDirectory() as tmp:
        store, book = trio.run(open_book, Path(tmp) / "state.db")
        book.tallies = tally(history([s.peer_id for s in signers], rng), book.settings)
        fitting = len(table.candidates(SPEC, NOW))

        def plain() -> object:
            return table.candidates(SPEC, NOW)

        def reputed() -> object:
            return table.candidates(SPEC, NOW, trust=book.ranking(NOW))

        best = {"without reputation (baseline)": float("inf"), "with reputation": float("inf")}
        for _ in range(args.rounds):  # interleaved, so load hits both alike
            best["without reputation (baseline)"] = min(best["without reputation (baseline)"],
                                                        per_call(plain, args.seconds))
            best["with reputation"] = min(best["with reputation"], per_call(reputed, args.seconds))
        trio.run(store.close)
    print(f"placement ranking: {len(table)} adverts in the peer table, {fitting} fit the spec, "
          f"{len(book.tallies)} providers with a history; best of {args.rounds} x {args.seconds}s CPU")
    print()
    print("| ranking | ms per placement |")
    print("|---|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.3f} |")
    base, rep = best["without reputation (baseline)"], best["with reputation"]
    print()
    print(f"reputation adds {100 * (rep / base - 1):.1f} % (target < 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
