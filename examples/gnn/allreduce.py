"""The smallest distributed check: every rank contributes rank + 1, gloo all_reduce sums them.

Reads the torchrun/peerd environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; GLOO_SOCKET_IFNAME when
set) through ``env://`` and prints one JSON line, e.g. ``{"rank": 0, "world_size": 2, "sum": 3,
"expected": 3}``; exits 1 when the sum is wrong. The gang integration test runs it on 2 providers.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> int:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    timeout = timedelta(seconds=float(os.environ.get("GNN_DIST_TIMEOUT_S", "120")))
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout)
    try:
        value = torch.tensor([rank + 1], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        expected = world * (world + 1) // 2
        print(json.dumps({"rank": rank, "world_size": world, "sum": int(value.item()), "expected": expected}),
              flush=True)
        return 0 if int(value.item()) == expected else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
