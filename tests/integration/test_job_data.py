"""Job data end to end: real `peerd run` processes on loopback, a real dockerd, the CLI.

A random nested input directory reaches the job on a remote provider (its
checksums, computed in the container, equal ours); the job's /out comes back
with ``submit --wait --output DIR`` and again with ``peerd get``, byte-equal and
matching the receipt; a second job with the same input moves (almost) no input
bytes; an unreadable input is a usage error naming the path; inputs larger
than every provider's room are not placed, with the provider's signed reason.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.client import Client
from peerd.data.unpack import expected_output_id
from peerd.devnet import DevNet, NodeProc
from tests.integration.cli import start_nodes

pytestmark = [pytest.mark.docker, pytest.mark.integration]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
INPUT_BYTES = 50 << 20  # the 50 MiB
PROVIDER_QUOTA = "200M"
SCRIPT = (
    "cd /inputs/data && find . -type f | sort | xargs sha256sum > /out/sums.txt && "
    "mkdir -p /out/nested/deeper && cp /inputs/data/d0/f0.bin /out/nested/deeper/copy.bin && echo ok"
)


class DataNet(DevNet):
    """The devnet, with a small chunk-store quota on the provider."""

    def config_text(self, node: NodeProc) -> str:
        text = super().config_text(node)
        if node.role == "provider":
            text += f'\n[storage]\nblob_quota = "{PROVIDER_QUOTA}"\n'
        return text


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DataNet() as devnet:
        yield start_nodes(devnet)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A random nested directory of about INPUT_BYTES; its sha256 by ./relative path."""
    root = tmp_path_factory.mktemp("inputs") / "data"
    rng = random.Random(7)
    sums, left, i = {}, INPUT_BYTES, 0
    while left > 0:
        sub = root / f"d{i % 4}" / (f"e{i % 3}" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = min(left, rng.randint(1, 3 << 20))
        data = rng.randbytes(size)
        path = sub / f"f{i}.bin"
        path.write_bytes(data)
        sums["./" + path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
        left -= size
        i += 1
    return root, sums


def counters(node: NodeProc) -> dict[str, int]:
    status = node.status()
    assert isinstance(status["counters"], dict)
    return status["counters"]


def submit(node: NodeProc, *args: str) -> tuple[int, dict[str, object], str]:
    out = node.peerd("submit", "--image", IMAGE, "--wait", "--json", *args)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr


def parse_sums(path: Path) -> dict[str, str]:
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in path.read_text().splitlines())}


def test_inputs_reach_the_job_and_outputs_come_back(net: DevNet, inputs: tuple[Path, dict[str, str]],
                                                    tmp_path: Path) -> None:
    root, sums = inputs
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    before = counters(provider)["data.inputs_fetched_bytes"]
    code, view, err = submit(requester, "--input", str(root), "--output", str(tmp_path / "out"),
                             "--", "sh", "-c", SCRIPT)
    assert code == 0, (view, err)
    assert view["state"] == "succeeded" and view["stdout"] == "ok\n"
    first = counters(provider)["data.inputs_fetched_bytes"] - before
    assert first >= INPUT_BYTES  # every input byte crossed the network once

    # the job saw exactly our files
    assert parse_sums(tmp_path / "out" / "sums.txt") == sums
    copy = tmp_path / "out" / "nested" / "deeper" / "copy.bin"
    assert copy.read_bytes() == (root / "d0" / "f0.bin").read_bytes()
    outputs = view["outputs"]
    assert isinstance(outputs, dict)
    assert outputs["id"] == expected_output_id(view) != ""
    assert outputs["files"] == 2 and outputs["path"] == str(tmp_path / "out")

    # later, from the provider again, into another directory: byte-equal
    task_id = str(view["task_id"])
    got = requester.peerd("get", task_id, "-o", str(tmp_path / "again"), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["outputs"]["id"] == outputs["id"]
    compare = filecmp.dircmp(tmp_path / "out", tmp_path / "again")
    assert not compare.left_only and not compare.right_only and not compare.diff_files
    assert filecmp.cmpfiles(tmp_path / "out", tmp_path / "again", ["sums.txt", "nested/deeper/copy.bin"],
                            shallow=False)[0] == ["sums.txt", "nested/deeper/copy.bin"]

    # the same, from Python (peerd.client)
    with Client(home=requester.home) as client:
        fetched = client.fetch_outputs(task_id, tmp_path / "python")
        assert client.task(task_id)["state"] == "succeeded"
    assert fetched["id"] == outputs["id"]
    assert (tmp_path / "python" / "sums.txt").read_bytes() == (tmp_path / "out" / "sums.txt").read_bytes()

    # the same input again: its chunks are in the provider's store already
    before = counters(provider)["data.inputs_fetched_bytes"]
    code, view, err = submit(requester, "--input", f"{root}:/inputs/data", "--", "sh", "-c", SCRIPT)
    assert code == 0, (view, err)
    second = counters(provider)["data.inputs_fetched_bytes"] - before
    print(f"input bytes fetched by the provider: first job {first}, second job {second}")
    assert second < 64 << 10


def test_an_unreadable_input_is_a_usage_error_naming_it(net: DevNet, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    code, _, err = submit(net.nodes["requester"], "--input", str(missing), "--", "true")
    assert code == 2
    assert str(missing) in err


def test_inputs_over_every_providers_room_are_not_placed_with_signed_reasons(net: DevNet, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:  # sparse: 300 MiB declared, one distinct chunk stored
        fh.truncate(300 << 20)
    code, view, err = submit(net.nodes["requester"], "--input", str(big), "--", "true")
    assert code == 1, (view, err)
    assert view["state"] == "not_placed"
    attempts = view["attempts"]
    assert isinstance(attempts, list) and attempts
    assert all(a["outcome"] == "rejected" and a["reason"] == "inputs_too_large" for a in attempts), attempts
    assert "inputs_too_large" in str(view["detail"])
