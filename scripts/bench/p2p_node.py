#!/usr/bin/env python3
"""One P2PService in its own process, driven over stdin/stdout (for propagation.py).

Prints JSON lines on stdout:
    {"event": "ready", "peer_id": ..., "addrs": [...]}
    {"event": "advert", "peer": ..., "seq": ..., "issued_at": ..., "received_at": ...}
        for every advert this node accepts (gossip or sync)
    {"event": "stats", "table": n, "connected": n, "counters": {...}}   (answer to "stats")
Reads commands on stdin, one per line:
    change   bump our advert's queue_depth and ask for a re-publish
    stats    print a stats line
    quit     stop (EOF on stdin also stops)

    python scripts/bench/p2p_node.py [--seed] [--listen ADDR] [--bootstrap ADDR]
    python scripts/bench/p2p_node.py --bare     # imports everything, runs no host: the baseline
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import trio

from peerd.config import NetworkConfig
from peerd.market.peertable import PeerEntry
from peerd.p2p.service import P2PService
from protocol.messages import Advert, NodeRole
from protocol.signing import Signer

GIB = 1 << 30


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Source:
    """Our advert: a CPU provider whose queue depth the driver bumps."""

    def __init__(self) -> None:
        self.advert = Advert(
            peer_id="unset", seq=0, issued_at=0.0, expires_at=0.0, role=NodeRole.PROVIDER,
            addrs=(), version="bench", cpus=8.0, memory=16 * GIB, disk=100 * GIB, gpus=(),
            free_cpus=8.0, free_memory=16 * GIB, free_gpus=(), queue_depth=0, running=0,
            price_cpu_hour=0.01, price_gpu_hour=0.5, docker=True, gpu_runtime=False,
            network=False, max_timeout=3600.0, draining=False,
        )

    def bump(self) -> None:
        self.advert = dataclasses.replace(self.advert, queue_depth=self.advert.queue_depth + 1)

    def __call__(self, now: float) -> Advert:
        return self.advert


def on_advert(entry: PeerEntry) -> None:
    emit(event="advert", peer=entry.peer_id, seq=entry.advert.seq,
         issued_at=entry.advert.issued_at, received_at=time.time())


async def commands(service: P2PService, source: Source | None, cancel: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = line.decode().strip()
            if cmd == "change" and source is not None:
                source.bump()
                service.advert_changed()
            elif cmd == "stats":
                emit(event="stats", table=len(service.table.entries(time.time())),
                     connected=len(service.connected_peers()), counters=service.counters)
            elif cmd == "quit":
                cancel.cancel()
                return
    cancel.cancel()


async def run(args: argparse.Namespace) -> None:
    source = None if args.seed else Source()
    service = P2PService(
        Signer.generate(), [args.listen], args.bootstrap, seed=args.seed, net=NetworkConfig(),
        advert_source=source, on_advert=on_advert,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        emit(event="ready", peer_id=service.peer_id, addrs=service.listen_addrs())
        await commands(service, source, nursery.cancel_scope)


async def bare() -> None:
    """Everything imported, no host: the memory and CPU floor of a node process."""
    emit(event="ready", peer_id="", addrs=[])
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    while await stdin.receive_some(4096):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", action="store_true")
    parser.add_argument("--bare", action="store_true")
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--bootstrap", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    trio.run(bare if args.bare else run, *(() if args.bare else (args,)))


if __name__ == "__main__":
    main()
