"""Commands that need no daemon: init, run's config, usage and unreachable errors."""

from __future__ import annotations

import socket
import subprocess
import sys
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
    # A command that only asks the daemon reads node.control_socket alone (peerd.home): a bad value
    # elsewhere is the daemon's to report (its status says whether it reloaded).
    ran = await peerd(tmp_path, "status")
    assert ran.code == EXIT_UNREACHABLE and "warning" not in ran.stderr
    # A file it cannot read at all: it warns and still tries the default socket.
    (tmp_path / "config.toml").write_text("[node\n")
    ran = await peerd(tmp_path, "status")
    assert ran.code == EXIT_UNREACHABLE and "not valid TOML" in ran.stderr.splitlines()[0]
    assert str(tmp_path / "control.sock") in ran.stderr


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


async def test_doctor_without_a_daemon_runs_the_checks_in_process(tmp_path: Path) -> None:
    # A docker_url nobody serves: the docker check fails the same way on every host.
    (tmp_path / "config.toml").write_text(f'[resources]\ndocker_url = "unix://{tmp_path}/none.sock"\n')
    ran = await peerd(tmp_path, "doctor", "--json")
    assert "no daemon answers" in ran.stderr and "running the checks in this process" in ran.stderr
    checks = ran.json()
    assert isinstance(checks, list)
    assert [c["name"] for c in checks] == ["docker", "gpus", "nvidia-runtime", "cgroup-limits", "disk", "overlay",
                                            "reachability"]
    assert checks[-1]["detail"].startswith("unknown: start the daemon")
    docker = checks[0]
    assert docker["ok"] is False and "systemctl" in docker["detail"]  # the fix follows the failure
    assert ran.code == 1



def test_the_cli_import_path_stays_light() -> None:
    """`peerd submit` and `peerd status` start fast: no I/O stack, no crypto, no message zoo."""
    # The parser imports a command's module when it builds its subparser: import them all here.
    probe = ("import sys, peerd.cli.parser, peerd.cli.submit, peerd.cli.query, peerd.cli.data, peerd.cli.local\n"
             "print('\\n'.join(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    heavy_roots = {"trio", "libp2p", "docker", "cryptography", "hypothesis", "psutil", "pynvml", "sqlite3"}
    heavy_modules = {"protocol.messages", "protocol.signing", "peerd.daemon.node", "peerd.host.doctor", "json",
                     "peerd.config"}
    assert "peerd.cli.submit" in loaded  # the probe did import the commands
    assert {m for m in loaded if m in heavy_modules or m.split(".")[0] in heavy_roots} == set()
