"""Gang jobs on real ``peerd run`` processes (libp2p, SQLite, dockerd): placement on distinct providers,
the signed roster, the environment contract in the containers, not-placed reasons, and a provider
killed mid-gang.

The overlay is real here (wireguard-go, the interface moved into each rank's container): a gloo
all_reduce of the GNN example's image crosses it, and a rank reaches the other rank and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerd.devnet import DevNet, NodeProc, wait_for
from peerd.executor.plan import LABEL_NODE, LABEL_TASK
from peerd.overlay.commands import tunnel_name
from peerd.overlay.wireguard import wireguard_go_processes
from protocol import codec
from protocol.messages import LeaseTerms

pytestmark = [pytest.mark.integration, pytest.mark.docker]

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
FINAL = ("succeeded", "failed", "not_placed", "lost", "cancelled", "timeout", "oom", "interrupted")
PROVIDERS = ["provider-1", "provider-2", "provider-3"]
PROVIDER_TIMEOUT = 4  # seconds
ENV_JOB = ("env | grep -E '^(RANK|WORLD_SIZE|MASTER_ADDR|MASTER_PORT|LOCAL_RANK|PEERD_[A-Z_]+|[A-Z]+_SOCKET_IFNAME)='"
           " | sort")
LONG_JOB = "trap 'exit 143' TERM; echo up; sleep 120 & wait $!"


class GangNet(DevNet):
    """The devnet with gang-enabled providers (endpoints on 127.0.0.1, kernel-picked ports)."""

    def __init__(self) -> None:
        super().__init__()
        self.gangs = True

    def config_text(self, node: NodeProc) -> str:
        return super().config_text(node).replace('provider_timeout = "8s"', f'provider_timeout = "{PROVIDER_TIMEOUT}s"')


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with GangNet() as devnet:
        devnet.add_seed()
        for name in PROVIDERS:
            devnet.add(name, "provider")
        devnet.add("requester", "requester")
        devnet.wait_adverts("requester", PROVIDERS)
        yield devnet


def submit(node: NodeProc, nodes: int, job: str, *, wait: bool = True, image: str = IMAGE,
           memory: str = "64M") -> dict[str, object]:
    args = ["submit", "--nodes", str(nodes), "--image", image, "--cpus", "0.2", "--memory", memory,
            "--timeout", "5m", "--json"]
    out = node.peerd(*args, *(["--wait"] if wait else []), "--", "sh", "-c", job, timeout=600)
    assert out.stdout, out.stderr
    return dict(json.loads(out.stdout))


def told(view: dict[str, object]) -> str:
    """The whole task view, for a failed assertion (pytest cuts a dict's repr short; the reason is deep in it)."""
    return json.dumps(view, indent=1, default=str)[:20000]


def show(node: NodeProc, task_id: str) -> dict[str, object]:
    out = node.peerd("show", task_id, "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def leases(node: NodeProc, gang_id: str) -> list[LeaseTerms]:
    with sqlite3.connect(f"file:{node.home / 'state.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT l.terms FROM leases AS l JOIN gang_ranks AS g ON g.task_id = l.task_id "
            "WHERE g.gang_id = ? ORDER BY g.rank", (gang_id,)).fetchall()
    terms = [codec.decode(bytes(row[0])) for row in rows]
    assert all(isinstance(t, LeaseTerms) for t in terms)
    return terms  # type: ignore[return-value]


def peer_ids(net: DevNet) -> dict[str, str]:
    return {str(net.nodes[name].status()["peer_id"]): name for name in PROVIDERS}


def containers(node_id: str, task_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_NODE}={node_id}",
                          "--filter", f"label={LABEL_TASK}={task_id}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def nothing_held(net: DevNet) -> None:
    def idle() -> bool:
        for name in PROVIDERS:
            node = net.nodes[name]
            if node.proc is None or node.proc.poll() is not None:
                continue
            capacity = node.status().get("capacity")
            assert isinstance(capacity, dict)
            if capacity["cpus_free"] != capacity["cpus"]:
                return False
        return True

    wait_for("every provider's capacity to be free", idle, 30)


def test_a_two_node_gang_runs_on_two_distinct_providers_with_the_env_contract(net: DevNet) -> None:
    requester = net.nodes["requester"]
    view = submit(requester, 2, ENV_JOB)
    assert view["state"] == "succeeded", told(view)
    ranks = view["ranks"]
    assert isinstance(ranks, list) and [r["rank"] for r in ranks] == [0, 1]
    assert len({r["provider"] for r in ranks}) == 2 and set(peer_ids(net)) >= {r["provider"] for r in ranks}
    for r in ranks:
        assert set(r) >= {"rank", "provider", "state", "exit_code", "stdout", "stderr"}
        assert r["state"] == "succeeded" and r["exit_code"] == 0
        env = dict(line.split("=", 1) for line in str(r["stdout"]).splitlines())
        assert env["RANK"] == env["PEERD_NODE_RANK"] == str(r["rank"])
        assert env["WORLD_SIZE"] == env["PEERD_NUM_NODES"] == "2" and env["LOCAL_RANK"] == "0"
        assert env["MASTER_ADDR"] == "10.99.0.1" and env["MASTER_PORT"] == "29500"
        assert env["PEERD_NODE_IPS"] == "10.99.0.1,10.99.0.2"
        assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "peerd0"
    terms = leases(requester, str(view["task_id"]))
    for t in terms:  # each provider signed a lease that names the gang and the other member
        assert t.gang is not None and t.gang.gang_id == view["task_id"] and t.gang.size == 2
        assert [m.peer for m in t.roster] == [r["provider"] for r in ranks]
        assert t.provider == ranks[t.gang.rank]["provider"]
    assert all(r["receipt"] for r in ranks)
    nothing_held(net)
    listed = json.loads(requester.peerd("tasks", "--json").stdout)
    assert [t["task_id"] for t in listed].count(view["task_id"]) == 1
    assert not any(str(t["task_id"]).startswith(f"{view['task_id']}-r") for t in listed)


def test_not_enough_providers_is_not_placed_with_each_reason_and_nothing_held(net: DevNet) -> None:
    view = submit(net.nodes["requester"], 4, "true")
    assert view["state"] == "not_placed", view
    detail = str(view["detail"])
    assert "4 distinct providers needed" in detail, detail
    attempts = view["attempts"]
    assert isinstance(attempts, list)
    cancelled = {a["provider"] for a in attempts if a["outcome"] == "declined" and a["provider"]}
    assert cancelled == set(peer_ids(net)), attempts  # every provider that offered was told, and why
    nothing_held(net)


def test_a_provider_killed_mid_gang_fails_the_gang_naming_its_rank(net: DevNet) -> None:
    requester = net.nodes["requester"]
    gang_id = str(submit(requester, 2, LONG_JOB, wait=False)["task_id"])
    running = wait_for("the gang to run", lambda: (v := show(requester, gang_id)) and
                       v["state"] == "running" and len(v.get("ranks") or []) == 2 and v, 60)
    ranks = running["ranks"]
    assert isinstance(ranks, list)
    names = peer_ids(net)
    victim, survivor = ranks[1], ranks[0]
    wait_for("both containers to run", lambda: all(
        containers(str(r["provider"]), str(r["task_id"])) for r in ranks), 60)
    net.stop(names[str(victim["provider"])], signal.SIGKILL)
    final = wait_for("the gang to end", lambda: (v := show(requester, gang_id)) and v["state"] in FINAL and v, 60)
    assert final["state"] == "failed", final
    assert "rank 1" in str(final["detail"]) and str(victim["provider"]) in str(final["detail"]), final["detail"]
    # the surviving rank was cancelled: its container is gone within the provider timeout
    wait_for("the survivor's container to go", lambda: not containers(str(survivor["provider"]),
                                                                       str(survivor["task_id"])),
             PROVIDER_TIMEOUT + 30)
    final_ranks = {r["rank"]: r for r in final["ranks"]}  # type: ignore[union-attr]
    assert final_ranks[0]["state"] == "cancelled" and final_ranks[0]["receipt"]
    assert final_ranks[1]["state"] == "lost"
    survivor_node = net.nodes[names[str(survivor["provider"])]]
    receipts = json.loads(survivor_node.peerd("receipts", "--json").stdout)
    assert str(survivor["task_id"]) in {r["task_id"] for r in receipts}
    assert not overlay_left(str(survivor["provider"]), str(survivor["task_id"]))  # its interface and key are gone
    # the killed provider's wireguard-go outlived it; its restart (recover) removes it and the holder
    victim_node = net.nodes[names[str(victim["provider"])]]
    net.start(victim_node)
    wait_for("the restarted provider to remove what its rank left", lambda: not overlay_left(
        str(victim["provider"]), str(victim["task_id"])) and not containers(str(victim["provider"]),
                                                                          str(victim["task_id"])), 60)




GNN_BUILD = Path(__file__).resolve().parents[2] / "examples" / "gnn" / "build-image"
GNN_IMAGE = "peerd-examples/gnn:1"


@pytest.fixture(scope="module")
def gnn_image() -> str:
    """The GNN example's image (torch, gloo), built locally when missing (minutes the first time)."""
    out = subprocess.run([str(GNN_BUILD)], capture_output=True, text=True, timeout=1800, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return GNN_IMAGE


def test_a_gloo_all_reduce_crosses_the_overlay_between_two_providers(net: DevNet, gnn_image: str) -> None:
    view = submit(net.nodes["requester"], 2, "python3 /opt/gnn/allreduce.py", image=gnn_image, memory="768M")
    assert view["state"] == "succeeded", told(view)
    ranks = view["ranks"]
    assert isinstance(ranks, list) and len({r["provider"] for r in ranks}) == 2  # two distinct providers
    for r in ranks:
        assert json.loads(str(r["stdout"]).strip().splitlines()[-1]) == {
            "rank": r["rank"], "world_size": 2, "sum": 3, "expected": 3}, r
    nothing_held(net)


def host_ipv4() -> list[str]:
    import psutil

    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET})


class HostListener:
    """A TCP listener on every host address: a rank that reaches the host is recorded."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[object] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_rank_reaches_the_other_rank_and_nothing_else(net: DevNet) -> None:
    host = HostListener()
    other = subprocess.run(["docker", "run", "-d", "--rm", IMAGE, "nc", "-l", "-p", "7000"],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        other_ip = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", other],
                                  capture_output=True, text=True, check=True).stdout.strip()
        targets = [f"{a} {host.port}" for a in host_ipv4()] + [f"{other_ip} 7000"]
        probes = "; ".join(f"if nc -w 1 {t} </dev/null; then echo reached {t.split()[0]}; "
                           f"else echo blocked {t.split()[0]}; fi" for t in targets)
        job = ('ls /sys/class/net; if [ "$RANK" = 1 ]; then nc -l -p 7001; else '
               "for i in $(seq 1 100); do echo hello | nc -w 1 10.99.0.2 7001 && break; sleep 0.2; done; "
               f"echo answered $?; {probes}; fi")
        view = submit(net.nodes["requester"], 2, job)
    finally:
        subprocess.run(["docker", "rm", "-f", other], capture_output=True, check=False)
        host.close()
    assert view["state"] == "succeeded", told(view)
    rank0, rank1 = view["ranks"]  # type: ignore[misc]
    assert str(rank1["stdout"]).split() == ["lo", "peerd0", "hello"]  # the other rank answered over the overlay
    lines = str(rank0["stdout"]).splitlines()
    assert lines[:3] == ["lo", "peerd0", "answered 0"], lines
    assert sorted(lines[3:]) == sorted(f"blocked {t.split()[0]}" for t in targets), lines
    assert host.accepted == []


def overlay_left(node_id: str, task_id: str) -> bool:
    name = tunnel_name(node_id, task_id)
    return name in wireguard_go_processes().values() or Path(f"/sys/class/net/{name}").exists()


def test_every_rank_gets_the_inputs(net: DevNet, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "greeting.txt").write_text("hello every rank\n")
    requester = net.nodes["requester"]
    out = requester.peerd("submit", "--nodes", "2", "--image", IMAGE, "--cpus", "0.2", "--memory", "64M",
                          "--input", f"{data}:/inputs/data", "--wait", "--json", "--",
                          "sh", "-c", "cat /inputs/data/greeting.txt; echo rank $RANK", timeout=300)
    view = json.loads(out.stdout)
    assert view["state"] == "succeeded", told(view)
    for r in view["ranks"]:
        assert r["stdout"] == f"hello every rank\nrank {r['rank']}\n", r
    # the ranks' pins went with the gang: only the gang's own (until it is final) or none remain
    def rank_pins() -> bool:
        with sqlite3.connect(f"file:{requester.home / 'blobs' / 'refs.db'}?mode=ro", uri=True) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            rows = [row for t in tables for row in db.execute(f"SELECT * FROM {t}")]  # noqa: S608
        return not any(str(r["task_id"]) in str(row) for r in view["ranks"] for row in rows)

    wait_for("the ranks' input pins to go", rank_pins, 30)
