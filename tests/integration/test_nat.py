"""Providers and requesters behind home routers (NAT), with the seeds relaying.

Real ``peerd run`` processes in network namespaces (tests/integration/netns.py):
the seeds and the public nodes sit on the bridge, each home router MASQUERADEs
its LAN. Nobody can dial a node behind a router; it learns that with the
dial-back check, takes reservations on two relays (the seeds) and advertises
its circuit addresses, and jobs reach it through a relay.

Job data (``/peerd/blob/1.0.0``) between nodes behind routers is moved by
``blobpeer`` processes (a node serving or fetching a task's chunks): it goes
directly when hole punching works, else not at all unless ``[relay]
allow_data``; each test says which path the streams took.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from peerd.devnet import wait_for
from tests.integration.cli import cli_json, submit
from tests.integration.netns import NODE_PORT, NetnsDevNet, netns_devnet

pytestmark = [pytest.mark.integration, pytest.mark.docker]

MOVE_WITHIN = 15.0  # seconds for a node to move to another relay once its relay is gone
SILENT_MOVE_WITHIN = 30.0  # ... once its relay's link died silently (relay.LIVENESS + PING_TIMEOUT + a dial)


def counters(devnet: NetnsDevNet, name: str) -> dict[str, int]:
    view = cli_json(devnet.nodes[name], "status")
    assert isinstance(view, dict) and isinstance(view["counters"], dict)
    return view["counters"]


def advertised(devnet: NetnsDevNet, observer: str, name: str) -> list[str]:
    """The addresses in ``name``'s advert as ``observer`` holds it ([] while it holds none)."""
    wanted = devnet.nodes[name].status()["peer_id"]
    peers = cli_json(devnet.nodes[observer], "peers")
    assert isinstance(peers, list)
    return next((list(p["addrs"]) for p in peers if p["peer_id"] == wanted), [])


def doctor_reachability(devnet: NetnsDevNet, name: str) -> dict[str, object]:
    """The reachability check of ``peerd doctor`` through ``name``'s daemon."""
    checks = cli_json(devnet.nodes[name], "doctor")
    assert isinstance(checks, list)
    return next(c for c in checks if c["name"] == "reachability")


def relays_in(addrs: list[str]) -> set[str]:
    """The relays' peer IDs in circuit addresses."""
    return {a.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[1] for a in addrs if "/p2p-circuit/" in a}


def wait_relayed(devnet: NetnsDevNet, name: str, observer: str, timeout: float = 40) -> set[str]:
    """Wait until ``observer`` holds ``name``'s advert with circuit addresses only, through 2 relays."""
    def probe() -> set[str] | None:
        addrs = advertised(devnet, observer, name)
        relays = relays_in(addrs)
        held = counters(devnet, name)
        ok = addrs and len(relays) >= 2 and all("/p2p-circuit/" in a for a in addrs)
        return relays if ok and held["relays_held"] >= 2 and held["reachable"] == 0 else None

    return wait_for(f"{observer} to see {name} as relayed", probe, timeout)


@pytest.fixture
def net() -> Iterator[NetnsDevNet]:
    with netns_devnet() as devnet:
        first = devnet.add_seed("seed-1")
        devnet.add("seed-2", "seed", bootstrap=[first.addr])
        devnet.network.add_router("home")
        devnet.network.add_router("office")
        devnet.network.add_router("carrier", symmetric=True)
        yield devnet


def test_provider_behind_nat_is_relayed_and_runs_a_public_requesters_job(net: NetnsDevNet) -> None:
    seeds = [net.nodes["seed-1"].addr, net.nodes["seed-2"].addr]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("public-provider", "provider", bootstrap=seeds, price=0.05)
    net.add("requester", "requester", bootstrap=seeds)
    wait_relayed(net, "home-provider", "requester")
    wait_for("the public provider to know it is public", lambda: counters(net, "public-provider")["reachable"], 30)
    assert counters(net, "public-provider")["relays_held"] == 0
    public_addrs = advertised(net, "requester", "public-provider")
    assert public_addrs and not relays_in(public_addrs)
    home, public = doctor_reachability(net, "home-provider"), doctor_reachability(net, "public-provider")
    assert home["ok"] is True and str(home["detail"]).startswith("relayed through 2 relay(s)"), home
    assert public["ok"] is True and str(public["detail"]).startswith("public"), public
    net.stop("public-provider")  # so the job has to go to the relayed provider
    view = submit(net.nodes["requester"], "echo through the relay", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "through the relay\n", view
    assert view["provider"] == net.nodes["home-provider"].status()["peer_id"]


def test_both_behind_different_nats_the_job_completes(net: NetnsDevNet) -> None:
    seeds = [net.nodes["seed-1"].addr, net.nodes["seed-2"].addr]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("office-requester", "requester", bootstrap=seeds, behind="office")
    wait_relayed(net, "home-provider", "office-requester")
    view = submit(net.nodes["office-requester"], "echo nat to nat", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "nat to nat\n", view


def relayed_by_two_of_three_seeds(net: NetnsDevNet) -> tuple[str, str]:
    """A third seed, the home provider relayed through two of the three, a public requester; one of the two
    relays (its name and peer ID)."""
    net.add("seed-3", "seed", bootstrap=[net.nodes["seed-1"].addr])
    seeds = [net.nodes[s].addr for s in ("seed-1", "seed-2", "seed-3")]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("requester", "requester", bootstrap=seeds)
    used = wait_relayed(net, "home-provider", "requester")
    relay = next(n for n in ("seed-1", "seed-2", "seed-3") if net.nodes[n].status()["peer_id"] in used)
    return relay, str(net.nodes[relay].status()["peer_id"])


def wait_moved_from(net: NetnsDevNet, relay_id: str, timeout: float) -> None:
    """Until the requester holds the home provider's advert naming two live relays, not ``relay_id``."""
    def moved() -> bool:
        relays = relays_in(advertised(net, "requester", "home-provider"))
        return len(relays) >= 2 and relay_id not in relays

    wait_for("the provider's advert to name two live relays again", moved, timeout)


def test_provider_moves_to_another_relay_when_its_relay_dies(net: NetnsDevNet) -> None:
    victim, victim_id = relayed_by_two_of_three_seeds(net)
    net.stop(victim)
    killed = time.monotonic()
    wait_moved_from(net, victim_id, MOVE_WITHIN)
    print(f"moved to another relay {time.monotonic() - killed:.1f}s after the relay was stopped")
    view = submit(net.nodes["requester"], "echo after the move", wait=True)
    assert view["state"] == "succeeded" and view["stdout"] == "after the move\n", view


def test_provider_moves_when_its_relays_link_dies_silently(net: NetnsDevNet) -> None:
    """A pulled cable: no reset reaches the provider, only the relay liveness check finds it out."""
    victim, victim_id = relayed_by_two_of_three_seeds(net)
    moves_before = counters(net, "home-provider")["relay_moves"]
    net.network.cut(victim)
    cut = time.monotonic()
    wait_moved_from(net, victim_id, SILENT_MOVE_WITHIN)
    print(f"moved to another relay {time.monotonic() - cut:.1f}s after the relay's cable was pulled")
    assert counters(net, "home-provider")["relay_moves"] == moves_before + 1


def test_a_jobs_inputs_and_outputs_move_directly_between_two_nats(net: NetnsDevNet, tmp_path: Path) -> None:
    seeds = [net.nodes["seed-1"].addr, net.nodes["seed-2"].addr]
    net.add("home-provider", "provider", bootstrap=seeds, behind="home")
    net.add("office-requester", "requester", bootstrap=seeds, behind="office")
    wait_relayed(net, "home-provider", "office-requester")
    data = os.urandom(3 << 20)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.bin").write_bytes(data)
    view = submit(net.nodes["office-requester"], "sha256sum /inputs/in/a.bin > /out/sum.txt && "
                  "cp /inputs/in/a.bin /out/copy.bin", wait=True,
                  flags=["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert view["state"] == "succeeded", json.dumps(view)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in (tmp_path / "out" / "sum.txt").read_text()
    paths = {name: {k: counters(net, name)[k] for k in ("data_streams_direct", "data_streams_relayed",
                                                         "direct_upgrades", "direct_upgrade_failures")}
             for name in ("home-provider", "office-requester")}
    print(f"job data paths: inputs (provider's fetch) {paths['home-provider']}, "
          f"outputs (requester's fetch) {paths['office-requester']}")
    for name, seen in paths.items():
        assert seen["data_streams_direct"] >= 1 and seen["data_streams_relayed"] == 0, (name, seen)


# ---------------------------------------------------------------- job data: blobpeer processes
BLOBPEER = [sys.executable, "-m", "tests.integration.blobpeer"]
DATA_MIB = 8
FETCH_WITHIN = 120.0


def seeds(devnet: NetnsDevNet) -> list[str]:
    return [n.addr for n in devnet.nodes.values() if n.role == "seed"]


@contextmanager
def blob_server(devnet: NetnsDevNet, name: str, *, behind: str | None, size: int = DATA_MIB) -> Iterator[dict]:
    """A blobpeer serving ``size`` MiB from host ``name``; yields what it wrote (peer_id, addrs, reachability)."""
    host = devnet.network.add_host(name, behind=behind)
    out, log = devnet.root / f"{name}.json", (devnet.root / f"{name}.log").open("wb")
    proc = host.popen([*BLOBPEER, "serve", "--listen", f"/ip4/{host.addr}/tcp/{NODE_PORT}",
                       "--bootstrap", *seeds(devnet), "--size", str(size),
                       "--store", str(devnet.root / f"{name}-store"), "--out", str(out)], stdout=log, stderr=log)
    log.close()
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}: {(devnet.root / f'{name}.log').read_text()}")
            return out.exists()

        wait_for(f"{name} to know its reachability", ready, 70)
        yield json.loads(out.read_text())
    finally:
        proc.kill()
        proc.wait()


def blob_fetch(devnet: NetnsDevNet, name: str, server: str, *, behind: str | None,
               allow_data: bool = False) -> dict:
    """A blobpeer in host ``name`` fetching all of ``server``'s data; what it reported."""
    host = devnet.network.hosts.get(name) or devnet.network.add_host(name, behind=behind)
    out = devnet.root / f"{name}.json"
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [*host.exec_prefix(), *BLOBPEER, "fetch", "--listen", f"/ip4/{host.addr}/tcp/{NODE_PORT}",
         "--bootstrap", *seeds(devnet), "--peer", str(devnet.root / f"{server}.json"),
         "--store", str(devnet.root / f"{name}-store-{time.monotonic_ns()}"), "--out", str(out),
         *(["--allow-data"] if allow_data else [])],
        capture_output=True, text=True, timeout=FETCH_WITHIN, check=False)
    assert done.returncode == 0 and out.exists(), f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def path_taken(result: dict) -> str:
    paths = result["paths"]
    return "none" if not paths else "relay" if all(paths) else "direct" if not any(paths) else "mixed"


def test_job_data_between_two_nats_moves_directly_after_hole_punching(net: NetnsDevNet) -> None:
    with blob_server(net, "home-server", behind="home") as served:
        assert served["reachability"] == "relayed" and all("/p2p-circuit/" in a for a in served["addrs"])
        result = blob_fetch(net, "office-fetcher", "home-server", behind="office")
    print(f"job data between two NATs: path {path_taken(result)}, {result}")
    assert result["complete"] and path_taken(result) == "direct", result
    assert result["direct_upgrades"] == 1


def test_behind_a_symmetric_nat_job_data_is_refused_unless_allowed_then_goes_through_the_relay(
    net: NetnsDevNet,
) -> None:
    with blob_server(net, "home-server", behind="home") as served:
        assert served["reachability"] == "relayed"
        refused = blob_fetch(net, "carrier-fetcher", "home-server", behind="carrier")
        allowed = blob_fetch(net, "carrier-fetcher", "home-server", behind="carrier", allow_data=True)
    print(f"symmetric NAT: without allow_data path {path_taken(refused)}: {refused['error']}")
    print(f"symmetric NAT: with allow_data path {path_taken(allowed)}, {allowed['seconds']:.1f}s")
    assert not refused["complete"] and "allow_data" in str(refused["error"]), refused
    assert refused["direct_upgrade_failures"] == 1 and path_taken(refused) == "none"
    assert allowed["complete"] and path_taken(allowed) == "relay", allowed
    assert allowed["direct_upgrades"] == 0 and allowed["direct_upgrade_failures"] == 0
