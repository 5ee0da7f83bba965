"""Retention under a stream of jobs: the provider's state.db and task dirs stop growing.

Real ``peerd run`` processes (seed, provider, requester) on 127.0.0.1 and a
real dockerd. Every node runs with ``[retention] max_size`` far below what
the stream prints (each job prints 1 MiB and leaves an output file); the
sizes are printed after every job, and must level off under a bound while
the total printed keeps growing. Old results still read back (state, exit
code, receipt) with their output marked as pruned.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from tests.integration.cli import start_nodes

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
MIB = 1 << 20
JOBS = 9
MAX_SIZE = 2 * MIB
SLACK = 2 * MIB  # schema pages, the WAL between checkpoints, one interval's worth of new output
RETENTION = f"""
[retention]
max_age = "0"
max_size = {MAX_SIZE}
interval = "1s"
"""
JOB = f"head -c {MIB} /dev/zero | tr '\\0' x; head -c 100000 /dev/urandom > /out/blob"


class RetainingNet(DevNet):
    def config_text(self, node: NodeProc) -> str:
        return super().config_text(node) + RETENTION


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with RetainingNet() as devnet:
        yield start_nodes(devnet)


def db_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("state.db*") if p.is_file())


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def sizes(net: DevNet) -> tuple[int, int, int]:
    provider, requester = net.nodes["provider"].home, net.nodes["requester"].home
    return db_bytes(provider), tree_bytes(provider / "tasks"), db_bytes(requester)


def cosigned_on_provider(net: DevNet, receipt: str) -> bool:
    out = net.nodes["provider"].peerd("receipts", "--json", "--limit", "5")
    return out.returncode == 0 and receipt in {r["cosigned"] for r in json.loads(out.stdout)}


def provider_levelled(net: DevNet) -> tuple[int, int, int] | None:
    now = sizes(net)
    return now if now[0] <= MAX_SIZE + SLACK + MIB else None


def test_a_stream_of_chatty_jobs_does_not_grow_the_provider_state(net: DevNet) -> None:
    samples: list[tuple[int, int, int]] = []
    task_ids: list[str] = []
    for n in range(JOBS):
        out = net.nodes["requester"].peerd("submit", "--image", IMAGE, "--wait", "--json", "--", "sh", "-c", JOB)
        view = json.loads(out.stdout)
        assert out.returncode == 0 and view["state"] == "succeeded", view
        assert len(view["stdout"]) == MIB
        task_ids.append(view["task_id"])
        receipt = view["receipt"]["cosigned"]
        wait_for("the provider to hold the co-signed receipt", partial(cosigned_on_provider, net, receipt), 20)
        if n >= JOBS // 2:
            # retention runs every second: the size must come back under the bound
            # after each job, not merely at one instant that may precede the next tick
            samples.append(wait_for("the provider's state.db to level off", partial(provider_levelled, net), 10))
        else:
            samples.append(sizes(net))
        db, tasks, req = samples[-1]
        print(f"job {n + 1:2d}: {(n + 1) * MIB / MIB:4.0f} MiB printed; provider state.db {db / MIB:5.2f} MiB, "
              f"tasks/ {tasks / MIB:5.2f} MiB; requester state.db {req / MIB:5.2f} MiB")
    bound = MAX_SIZE + SLACK
    assert JOBS * MIB > 2 * bound  # without retention the stream would blow through the bound

    def under_bound() -> tuple[int, int, int] | None:
        now = sizes(net)
        return now if now[0] + now[1] <= bound and now[2] <= bound else None

    settled = wait_for("the provider and requester to settle under the bound", under_bound, 15)
    print(f"settled: provider state.db {settled[0] / MIB:.2f} MiB, tasks/ {settled[1] / MIB:.2f} MiB, "
          f"requester state.db {settled[2] / MIB:.2f} MiB (bound {bound / MIB:.0f} MiB)")
    # the oldest task's record of account is intact on both sides; only its output is gone
    for name in ("provider", "requester"):
        out = net.nodes[name].peerd("show", task_ids[0], "--json")
        old = json.loads(out.stdout)
        assert old["state"] == "succeeded" and old["exit_code"] == 0 and old["stdout"] == "", old
        assert "output pruned by retention" in old["detail"]
        assert old["receipt"]["verified"] is True
    newest = json.loads(net.nodes["requester"].peerd("show", task_ids[-1], "--json").stdout)
    assert len(newest["stdout"]) == MIB  # the newest output still fits under max_size
