"""SIGKILL of either side while a job's inputs move, then restart (real ``peerd run`` processes, real dockerd).

(a) The provider is killed while it fetches (stages) the inputs: after its
restart the half-staged copy is gone, the task settles with a reason (no
container: ``interrupted``) and the requester's task ends final with that
reason. (b) The requester is killed while the provider fetches from it: the
provider's fetch gives up on it and the job settles (``staging: …``); the
restarted requester collects that result. After each: every chunk in both
chunk stores re-hashes to its name and no pins remain for the task (its job
wrote no outputs to keep). Kills are triggered by a condition (the
requester's served-bytes counter moved), never by a sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from tests.integration.cli import FINAL_STATES, IMAGE, start_nodes, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.integration]

INPUT_BYTES = 160 << 20  # large enough that a transfer on loopback takes a while to finish


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet)


def make_input(root: Path, tag: str) -> Path:
    """INPUT_BYTES of fresh random data in a few files (distinct chunks: nothing is stored yet)."""
    data = root / f"input-{tag}"
    data.mkdir()
    per_file = INPUT_BYTES // 8
    for i in range(8):
        (data / f"f{i}.bin").write_bytes(os.urandom(per_file))
    return data


def served(node: NodeProc) -> int:
    counters = node.status()["counters"]
    assert isinstance(counters, dict)
    return int(counters["data.served_bytes"])




def submit_with_input(node: NodeProc, data: Path) -> str:
    out = node.peerd("submit", "--image", IMAGE, "--json", "--input", f"{data}:/inputs/data", "--", "true")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["task_id"])


def kill_mid_transfer(net: DevNet, victim: str) -> int:
    """SIGKILL ``victim`` once the requester has served some input bytes, but not all; returns what it had."""
    requester = net.nodes["requester"]
    before = served(requester)
    moved = wait_for("the provider to fetch input chunks", lambda: served(requester) - before or None, 60,
                     interval=0.02)
    assert net.stop(victim, signal.SIGKILL) == -signal.SIGKILL
    assert moved < INPUT_BYTES, f"the transfer ended ({moved} bytes) before {victim} could be killed mid-way"
    return moved


def corrupt_chunks(home: Path) -> list[str]:
    """Chunk files under ``<home>/blobs`` whose bytes do not hash to their name."""
    bad = []
    for path in (home / "blobs").glob("[0-9a-f][0-9a-f]/*"):
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            bad.append(str(path))
    return bad


def pins(home: Path, task_id: str) -> int:
    conn = sqlite3.connect(f"file:{home / 'blobs' / 'refs.db'}?mode=ro", uri=True)
    try:
        [(count,)] = conn.execute("SELECT COUNT(*) FROM refs WHERE task_id = ?", (task_id,)).fetchall()
    finally:
        conn.close()
    return int(count)


def unpinned(home: Path, task_id: str) -> bool:
    return pins(home, task_id) == 0


def assert_clean(net: DevNet, task_id: str) -> None:
    for node in (net.nodes["provider"], net.nodes["requester"]):
        wait_for(f"{node.name} to drop the pins of {task_id}", partial(unpinned, node.home, task_id), 30)
        assert corrupt_chunks(node.home) == [], node.name
        assert not (node.home / "staging" / task_id).exists()


def assert_settled_with_reason(view: dict[str, object]) -> None:
    assert view["state"] in FINAL_STATES, view
    if view["state"] != "succeeded":
        assert view["detail"], f"the task ended {view['state']} without a reason: {view}"


def test_provider_killed_while_staging_inputs(net: DevNet, tmp_path: Path) -> None:
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    task_id = submit_with_input(requester, make_input(tmp_path, "a"))
    kill_mid_transfer(net, "provider")
    assert (provider.home / "staging" / task_id).is_dir()  # the half-staged copy the crash left
    net.start(provider)
    assert not (provider.home / "staging" / task_id).exists()  # removed while the node started
    view = wait_final(requester, task_id, 90)
    assert_settled_with_reason(view)
    assert_clean(net, task_id)


def test_requester_killed_while_the_provider_fetches_its_inputs(net: DevNet, tmp_path: Path) -> None:
    requester = net.nodes["requester"]
    net.wait_adverts("requester", ["provider"])
    task_id = submit_with_input(requester, make_input(tmp_path, "b"))
    kill_mid_transfer(net, "requester")
    net.start(requester)
    view = wait_final(requester, task_id, 90)
    assert_settled_with_reason(view)
    assert_clean(net, task_id)
