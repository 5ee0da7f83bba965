"""examples/gnn: the image builds with no registry, and train.py / allreduce.py run in it.

One rank under the job sandbox peerd gives a container (read-only root, /tmp a tmpfs, user nobody, no
capabilities, no network); two ranks as two containers on a user-defined docker bridge network (the gang
overlay will replace that network): gloo's all_reduce sums across them, and they train to the same test
accuracy as one rank, within train.py's stated tolerance.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "examples" / "gnn" / "build-image"
IMAGE = "peerd-examples/gnn:1"
BUILD_TIMEOUT_S = 1200  # from scratch: debootstrap + the torch wheel (minutes on a small host)
RUN_TIMEOUT_S = 300
TOLERANCE = 0.01  # train.py's ACCURACY_TOLERANCE
# One epoch on the default graph (100,000 nodes, ~500,000 edges): the same arguments for 1 and 2 ranks.
TRAIN = ["python3", "/opt/gnn/train.py", "--epochs", "1"]
SANDBOX = ["--read-only", "--tmpfs", "/tmp:rw,size=64m", "--user", "65534:65534", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--memory", "2g", "--pids-limit", "256"]


def build_impossible() -> str | None:
    """Why this machine cannot build the image (then the tests skip), or None."""
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (scripts/bootstrap installs it)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = build_impossible()
    if reason is not None:
        pytest.skip(reason)
    out = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready in" in out.stdout, out.stdout
    return IMAGE


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def event(records: list[dict[str, object]], name: str) -> dict[str, object]:
    found = [r for r in records if r.get("event") == name]
    assert len(found) == 1, records
    return found[0]


@pytest.fixture(scope="module")
def one_rank(image: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, object]], Path]:
    out_dir = tmp_path_factory.mktemp("gnn-out")
    out_dir.chmod(0o777)
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *SANDBOX, "-v", f"{out_dir}:/out", image, *TRAIN],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json_lines(done.stdout), out_dir


def test_one_rank_trains_in_the_job_sandbox(one_rank: tuple[list[dict[str, object]], Path]) -> None:
    records, out_dir = one_rank
    setup = event(records, "setup")
    assert setup["world_size"] == 1
    assert isinstance(setup["edges"], int) and setup["edges"] >= 100_000
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1]
    assert isinstance(epochs[0]["time_s"], float) and epochs[0]["time_s"] > 0
    result = event(records, "result")
    accuracy = result["test_accuracy"]
    assert isinstance(accuracy, float) and accuracy > 0.5  # chance is 0.1 (10 communities)
    assert json.loads((out_dir / "result.json").read_text())["test_accuracy"] == accuracy
    assert (out_dir / "model.pt").stat().st_size > 0


@pytest.fixture
def bridge() -> Iterator[tuple[str, list[str]]]:
    """A user-defined bridge network and the names its containers get; all removed afterwards."""
    name = f"peerd-gnn-test-{secrets.token_hex(4)}"
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    containers = [f"{name}-rank{r}" for r in range(2)]
    try:
        yield name, containers
    finally:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


def run_ranks(image: str, network: str, names: list[str], command: list[str]) -> list[list[dict[str, object]]]:
    """Run ``command`` as ranks 0..n-1, one container each, on ``network``; every rank's JSON lines."""
    procs = [
        subprocess.Popen(
            ["docker", "run", "--rm", "--name", name, "--hostname", name, "--network", network, *SANDBOX,
             "-e", f"MASTER_ADDR={names[0]}", "-e", "MASTER_PORT=29500", "-e", f"RANK={rank}",
             "-e", f"WORLD_SIZE={len(names)}", "-e", "LOCAL_RANK=0", "-e", "GLOO_SOCKET_IFNAME=eth0",
             image, *command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank, name in enumerate(names)
    ]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, stdout + stderr
        outputs.append(json_lines(stdout))
    return outputs


def test_two_ranks_all_reduce_over_a_bridge_network(image: str, bridge: tuple[str, list[str]]) -> None:
    network, names = bridge
    outputs = run_ranks(image, network, names, ["python3", "/opt/gnn/allreduce.py"])
    assert [o[-1] for o in outputs] == [{"rank": r, "world_size": 2, "sum": 3, "expected": 3} for r in range(2)]


def test_two_ranks_train_to_the_accuracy_of_one(image: str, bridge: tuple[str, list[str]],
                                                one_rank: tuple[list[dict[str, object]], Path]) -> None:
    network, names = bridge
    outputs = run_ranks(image, network, names, [*TRAIN, "--out", ""])
    alone = event(one_rank[0], "result")["test_accuracy"]
    assert isinstance(alone, float)
    for rank, records in enumerate(outputs):
        assert event(records, "setup")["world_size"] == 2
        assert [r["epoch"] for r in records if r.get("event") == "epoch"] == [1]
        result = event(records, "result")
        assert result["rank"] == rank
        accuracy = result["test_accuracy"]
        assert isinstance(accuracy, float) and abs(accuracy - alone) <= TOLERANCE, (accuracy, alone)
