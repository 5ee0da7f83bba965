"""Commands that need no daemon: init, run's config, usage and unreachable errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from peerd.cli.context import EXIT_UNREACHABLE, UsageError
from peerd.cli.local import daemon_config
from peerd.config import Config, NodeConfig

from .runner import peerd

SEED = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWSeedSeedSeedSeedSeedSeedSeedSeedSeedSeedSe"


async def test_init_creates_then_keeps_the_identity(tmp_path: Path) -> None:
    home = tmp_path / "node"
    first = await peerd(home, "init", "--json")
    assert first.code == 0, first.stderr
    doc = first.json()
    assert isinstance(doc, dict) and doc["created"] is True and doc["home"] == str(home)
    assert doc["peer_id"].startswith("12D3KooW") and (home / "node.key").exists()
    again = await peerd(tmp_path, "init", "--home", str(home))
    assert again.code == 0 and doc["peer_id"] in again.stdout and "already initialised" in again.stdout


async def test_no_daemon_exits_3(tmp_path: Path) -> None:
    ran = await peerd(tmp_path, "status")
    assert ran.code == 3
    assert "does not exist" in ran.stderr and str(tmp_path / "control.sock") in ran.stderr


async def test_dead_daemon_socket_exits_3(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "control.sock"))
    dead.close()
    ran = await peerd(tmp_path, "status", "--json")
    assert ran.code == 3 and "no daemon is listening" in ran.stderr
    assert ran.stdout == ""


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in ([], ["frobnicate"], ["show"], ["tasks", "--limit", "0"], ["run", "--role", "seed"]):
        ran = await peerd(tmp_path, *argv)
        assert ran.code == 2, argv
        assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr


async def test_bad_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[node]\nrole = 'boss'\n")
    ran = await peerd(tmp_path, "run")
    assert ran.code == 1 and "node.role" in ran.stderr and "Traceback" not in ran.stderr
    # A command that only asks the daemon warns and still tries (the daemon may hold the old settings).
    ran = await peerd(tmp_path, "status")
    assert ran.code == EXIT_UNREACHABLE and "node.role" in ran.stderr.splitlines()[0]


def test_run_flags_override_the_config() -> None:
    config = Config(home=Path("/h"), node=NodeConfig(bootstrap=(SEED,)))
    other = SEED.replace("tcp/4001", "tcp/4002")
    result = daemon_config(config, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[SEED, other],
                           role="requester", control_socket="/h/c.sock")
    assert result.node.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert result.node.bootstrap == (SEED, other)
    assert result.node.role == "requester"
    assert result.control_path == Path("/h/c.sock")
    assert daemon_config(config, listen=[], bootstrap=[], role=None) == config


@pytest.mark.parametrize(("listen", "bootstrap", "flag"), [
    (["127.0.0.1:4001"], [], "--listen"),
    ([], ["/ip4/127.0.0.1/tcp/4001"], "--bootstrap"),
])
def test_run_rejects_bad_multiaddrs(listen: list[str], bootstrap: list[str], flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        daemon_config(Config(), listen=listen, bootstrap=bootstrap, role=None)
