"""A node that serves or fetches job data, run in a netns host (test_nat.py, scripts/bench/relay.py).

    python -m tests.integration.blobpeer serve --listen MADDR --bootstrap SEED... --size MIB --store DIR --out FILE
    python -m tests.integration.blobpeer fetch --listen MADDR --bootstrap SEED... --peer FILE --store DIR
                                               [--allow-data] --out FILE

``serve``: a real P2PService that fills its chunk store with ``--size`` random
1 MiB chunks pinned for ``TASK`` and serves them on ``/peerd/blob/1.0.0`` to
any peer (it stands in for the lease check). Once it knows whether peers can
dial it (and, when they cannot, holds its relay reservations) it writes
``{"peer_id", "addrs", "reachability", "digests"}`` to ``--out`` (the
addresses its advert would carry) and runs until it is killed.

``fetch``: a real P2PService that reads that file, fetches every digest with
``peerd.data.transfer.blob_opener`` (4 streams) ``--rounds`` times, each into an
empty store, and writes ``{"complete", "error", "seconds", "bytes"}`` of the
first round, ``rounds`` (the same for each), ``paths`` (for each blob stream:
did it run through a relay) and ``direct_upgrades`` /
``direct_upgrade_failures`` (``P2PService.counters``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import trio

from peerd.config import NetworkConfig, RelayConfig
from peerd.data.blobstore import BlockingChunkStore, ChunkStore
from peerd.data.transfer import OpenStream, TransferError, blob_opener, fetch, register_blob_protocol
from peerd.jobs.taskwire import ByteStream
from peerd.p2p.service import P2PService
from protocol.reachability import Reachability
from protocol.signing import Signer
from tests.waiting import eventually

TASK = "task-relay-1"
MIB = 1 << 20
NET = NetworkConfig(io_timeout=30.0, connect_timeout=5.0)
KNOWN_WITHIN = 60.0  # seconds for the server to learn its reachability (and reserve when relayed)


def fill(root: Path, size_mib: int) -> list[bytes]:
    files = BlockingChunkStore.open(root)
    digests = []
    try:
        for _ in range(size_mib):
            data = os.urandom(MIB)
            digest = hashlib.sha256(data).digest()
            files.pin(TASK, [digest])
            files.put(digest, data)
            digests.append(digest)
    finally:
        files.close()
    return digests


def write(path: str, fields: dict[str, object]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(fields))
    tmp.rename(path)  # readers see all of it or nothing


async def serve(args: argparse.Namespace) -> None:
    digests = await trio.to_thread.run_sync(fill, Path(args.store), args.size)
    store = await ChunkStore.open(Path(args.store))
    service = P2PService(Signer.generate(), [args.listen], args.bootstrap, seed=False, net=NET, advert_source=None)

    async def anyone(peer: str, task: str) -> bool:
        return task == TASK

    register_blob_protocol(service, store, anyone, timeout=NET.io_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await eventually("this peer to be reachable (public or relayed)",
                         lambda: service.reachability().state in (Reachability.PUBLIC, Reachability.RELAYED),
                         timeout=KNOWN_WITHIN)
        write(args.out, {"peer_id": service.peer_id, "addrs": service.advertised_addrs(),
                         "reachability": str(service.reachability().state), "digests": [d.hex() for d in digests]})
        await trio.sleep_forever()


async def fetch_round(opener: OpenStream, peer_id: str, digests: list[bytes], root: Path) -> dict[str, object]:
    store = await ChunkStore.open(root)
    begun = time.perf_counter()
    try:
        report = await fetch(opener, [peer_id], TASK, digests, store, timeout=NET.io_timeout)
        done: dict[str, object] = {"complete": report.complete, "error": "", "bytes": report.chunk_bytes}
    except TransferError as exc:
        done = {"complete": False, "error": str(exc), "bytes": 0}
    finally:
        await store.close()
    return {**done, "seconds": time.perf_counter() - begun}


async def fetch_once(args: argparse.Namespace) -> None:
    peer = json.loads(Path(args.peer).read_text())
    relay = RelayConfig(allow_data=args.allow_data)
    service = P2PService(Signer.generate(), [args.listen], args.bootstrap, seed=False, net=NET,
                         advert_source=None, relay=relay)
    paths: list[bool] = []
    opener = blob_opener(service, {peer["peer_id"]: peer["addrs"]})

    async def recording(peer_id: str) -> ByteStream:
        stream = await opener(peer_id)
        paths.append(stream.relayed)  # type: ignore[attr-defined]  # a p2p Stream
        return stream

    rounds: list[dict[str, object]] = []
    digests = [bytes.fromhex(d) for d in peer["digests"]]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for n in range(args.rounds):  # each round into an empty store: round 1 also makes the connection
            rounds.append(await fetch_round(recording, peer["peer_id"], digests, Path(args.store) / str(n)))
            if not rounds[-1]["complete"]:
                break
        counted = {k: service.counters[k] for k in ("direct_upgrades", "direct_upgrade_failures")}
        nursery.cancel_scope.cancel()
    out = {**rounds[0], "rounds": rounds, "paths": paths, **counted}
    write(args.out, out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("serve", "fetch"))
    parser.add_argument("--listen", required=True)
    parser.add_argument("--bootstrap", nargs="*", default=[])
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=8, help="MiB to serve")
    parser.add_argument("--peer", help="the serving node's file (fetch)")
    parser.add_argument("--rounds", type=int, default=1, help="fetches, each into an empty store (fetch)")
    parser.add_argument("--allow-data", action="store_true", help="[relay] allow_data = true (fetch)")
    parser.add_argument("--debug", nargs="*", default=[], help="loggers to log at DEBUG (to stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in args.debug:
        logging.getLogger(name).setLevel(logging.DEBUG)
    trio.run(serve if args.mode == "serve" else fetch_once, args)


if __name__ == "__main__":
    main(sys.argv[1:])

