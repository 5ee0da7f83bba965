"""The CLI against a real control socket served by a stub node."""

from __future__ import annotations

import json
import os
import sys

import pytest
import trio

from protocol.messages import JobSpec
from tests.control.harness import Daemon

from .runner import cli_env, peerd

IMAGE = "peerd-test/busybox:1"
TASK_VIEW_KEYS = {"task_id", "state", "exit_code", "stdout", "stderr", "provider", "attempts", "receipt",
                  "created_at", "updated_at", "spec", "role", "detail"}


async def test_status_human_and_json(daemon: Daemon) -> None:
    home = daemon.path.parent
    text = await peerd(home, "status")
    assert text.code == 0, text.stderr
    assert "2 connected, 3 known" in text.stdout and "12D3KooWStub" in text.stdout
    ran = await peerd(home, "status", "--json")
    assert ran.code == 0
    doc = ran.json()
    assert isinstance(doc, dict)
    assert set(doc) == {"peer_id", "addrs", "role", "peers_connected", "peers_known", "tasks_running",
                        "tasks_queued", "version", "counters", "draining"}


async def test_options_before_the_command_and_home_flag(daemon: Daemon) -> None:
    elsewhere = daemon.path.parent / "elsewhere"
    ran = await peerd(elsewhere, "--json", "--home", str(daemon.path.parent), "status")
    assert ran.code == 0, ran.stderr
    assert ran.json()["role"] == "provider"  # type: ignore[index]
    ran = await peerd(elsewhere, "status", "--socket", str(daemon.path), "--json")
    assert ran.code == 0 and ran.json()["role"] == "provider"  # type: ignore[index]


async def test_peers_json_is_an_array(daemon: Daemon) -> None:
    ran = await peerd(daemon.path.parent, "peers", "--json")
    assert ran.code == 0
    peers = ran.json()
    assert isinstance(peers, list) and len(peers) == 1
    assert peers[0]["advert"]["gpus"][0]["model"] == "H100"
    text = await peerd(daemon.path.parent, "peers")
    assert "1x H100" in text.stdout and "6/8" in text.stdout
    assert "SCORE" in text.stdout and "0.75" in text.stdout


async def test_peer_shows_reputation_and_history_newest_first(daemon: Daemon) -> None:
    provider = "12D3KooWProviderProviderProviderProviderProvide"
    ran = await peerd(daemon.path.parent, "peer", provider, "--json")
    assert ran.code == 0, ran.stderr
    doc = ran.json()
    assert doc["reputation"]["score"] == 0.75  # type: ignore[index]
    assert [h["event"] for h in doc["history"]] == ["completed", "leased"]  # type: ignore[index]
    text = await peerd(daemon.path.parent, "peer", provider)
    assert "completed 2" in text.stdout and "0.25s" in text.stdout
    assert text.stdout.index("completed  ") < text.stdout.index("leased  ")
    missing = await peerd(daemon.path.parent, "peer", "12D3KooWnobody")
    assert missing.code != 0 and "no peer" in missing.stderr


async def test_submit_prints_the_task_id_and_sends_the_spec(daemon: Daemon) -> None:
    ran = await peerd(daemon.path.parent, "submit", "--image", IMAGE, "--cpus", "2", "--memory", "512M",
                      "--gpus", "1", "--gpu-memory", "24G", "--gpu-model", "H100", "--timeout", "90s",
                      "--max-price", "3.5", "--env", "A=1", "--env", "B=x=y", "--network", "--local",
                      "--", "sh", "-c", "echo hi")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "t0001\n"
    (op, args), = daemon.ops.calls
    assert op == "submit" and args["local"] is True
    assert args["spec"] == JobSpec(
        image=IMAGE, command=("sh", "-c", "echo hi"), env={"A": "1", "B": "x=y"}, cpus=2.0,
        memory=512 << 20, gpus=1, gpu_memory=24 * 10**9, gpu_model="H100", timeout=90.0,  # GPU memory: decimal
        network=True, max_price=3.5,
    )


async def test_submit_json_and_image_from_environment(daemon: Daemon) -> None:
    home = daemon.path.parent
    ran = await peerd(home, "submit", "--json", "--", "echo", "x", env=cli_env(home, PEERD_IMAGE=IMAGE))
    assert ran.code == 0, ran.stderr
    assert ran.json() == {"task_id": "t0001"}
    (_, args), = daemon.ops.calls
    assert args["spec"].image == IMAGE and args["local"] is False  # type: ignore[union-attr]
    assert args["spec"] == JobSpec(image=IMAGE, command=("echo", "x"))  # untouched defaults


async def test_submit_wait_succeeds_with_the_jobs_output(daemon: Daemon) -> None:
    ran = await peerd(daemon.path.parent, "submit", "--image", IMAGE, "--wait", "--", "echo", "hello")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "hello\n"
    assert "submitted t0001" in ran.stderr and "succeeded (exit 0)" in ran.stderr


async def test_submit_wait_json_failure_exits_1(daemon: Daemon) -> None:
    ran = await peerd(daemon.path.parent, "submit", "--image", IMAGE, "--wait", "--json", "--", "false")
    assert ran.code == 1
    view = ran.json()
    assert isinstance(view, dict) and TASK_VIEW_KEYS <= set(view)
    assert view["state"] == "failed" and view["exit_code"] == 1 and view["stderr"] == "it failed\n"
    assert view["attempts"] == [{"provider": view["provider"], "outcome": "failed", "reason": "", "detail": ""}]
    assert set(view["receipt"]) == {"task_id", "provider", "requester", "cost", "state", "verified", "cosigned"}


async def test_submit_follow_streams_then_waits(daemon: Daemon) -> None:
    async with trio.open_nursery() as nursery:
        async def finish_when_followed() -> None:
            await daemon.ops.called("logs")
            daemon.ops.add_output("t0001", b"streamed\n")
            daemon.ops.tasks_by_id["t0001"].finish(0, b"")

        nursery.start_soon(finish_when_followed)
        ran = await peerd(daemon.path.parent, "submit", "--image", IMAGE, "--follow", "--", "hang")
    assert ran.code == 0, ran.stderr
    assert ran.stdout == "streamed\n"
    assert [op for op, _ in daemon.ops.calls] == ["submit", "logs", "wait"]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--memory", "12Q"], "argument --memory: not a size: '12Q'"),
        (["--gpu-memory", "lots"], "argument --gpu-memory: not a size"),
        (["--timeout", "forever"], "argument --timeout: not a duration: 'forever'"),
        (["--timeout", "0s"], "argument --timeout: must be longer than zero"),
        (["--cpus", "-1"], "argument --cpus: must be a non-negative number"),
        (["--gpus", "two"], "argument --gpus: not a whole number"),
        (["--env", "NOVALUE"], "argument --env: expected NAME=VALUE"),
        (["--memory", "1K"], "--memory must be in"),
        (["--cpus", "0"], "--cpus must be in (0"),
        ([], "--image is required"),
    ],
)
async def test_bad_submit_flags_exit_2_naming_the_flag(daemon: Daemon, flags: list[str], needle: str) -> None:
    image = [] if not flags else ["--image", IMAGE]
    ran = await peerd(daemon.path.parent, "submit", *image, *flags, "--", "true")
    assert ran.code == 2
    assert needle in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
    assert daemon.ops.calls == []


async def test_submit_without_a_command_is_a_usage_error(daemon: Daemon) -> None:
    ran = await peerd(daemon.path.parent, "submit", "--image", IMAGE)
    assert ran.code == 2 and "a command is required" in ran.stderr


async def test_tasks_show_logs(daemon: Daemon) -> None:
    home = daemon.path.parent
    assert (await peerd(home, "submit", "--image", IMAGE, "--", "echo", "one")).code == 0
    tasks = (await peerd(home, "tasks", "--json")).json()
    assert isinstance(tasks, list) and [t["task_id"] for t in tasks] == ["t0001"]
    assert TASK_VIEW_KEYS <= set(tasks[0])
    text = await peerd(home, "tasks")
    assert "t0001" in text.stdout and "succeeded" in text.stdout
    shown = await peerd(home, "show", "t0001", "--json")
    assert shown.code == 0 and shown.json()["stdout"] == "one\n"  # type: ignore[index]
    text = await peerd(home, "show", "t0001")
    assert "signatures verified" in text.stdout and "one" in text.stdout
    logs = await peerd(home, "logs", "t0001")
    assert logs.code == 0 and logs.stdout == "one\n"
    logs_json = await peerd(home, "logs", "t0001", "--json")
    assert logs_json.json() == {"task_id": "t0001", "stdout": "one\n", "stderr": ""}


async def test_unknown_task_exits_1(daemon: Daemon) -> None:
    for command in ("show", "cancel", "logs"):
        ran = await peerd(daemon.path.parent, command, "nope")
        assert ran.code == 1, command
        assert "no task 'nope'" in ran.stderr


async def test_cancel_receipts_drain(daemon: Daemon) -> None:
    home = daemon.path.parent
    daemon.ops.add_task(("hang",))
    ran = await peerd(home, "cancel", "t0001", "--json")
    assert ran.code == 0 and ran.json() == {"task_id": "t0001", "state": "cancelled",
                                            "detail": "cancel requested"}
    receipts = (await peerd(home, "receipts", "--json")).json()
    assert isinstance(receipts, list) and receipts[0]["task_id"] == "t0001"
    drained = await peerd(home, "drain", "--json")
    assert drained.code == 0 and drained.json()["draining"] is True  # type: ignore[index]


async def test_doctor_exit_code_follows_the_checks(daemon: Daemon) -> None:
    ok = await peerd(daemon.path.parent, "doctor", "--json")
    assert ok.code == 0 and [c["name"] for c in ok.json()] == ["docker", "identity"]  # type: ignore[union-attr]
    daemon.ops.doctor_ok = False
    failing = await peerd(daemon.path.parent, "doctor")
    assert failing.code == 1 and "FAIL" in failing.stdout


async def test_cli_imports_neither_trio_nor_libp2p(daemon: Daemon) -> None:
    # The socket found from the home (peerd.home reads the one key), not given: the config's
    # dataclasses stay unloaded too.
    (daemon.path.parent / "config.toml").write_text("[node]\nrole = 'requester'\n")
    probe = (
        "import sys, json\n"
        "from peerd.cli import main\n"
        f"code = main(['--home', {str(daemon.path.parent)!r}, 'status', '--json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'libp2p', 'docker')\n"
        "               or m in ('peerd.config', 'cryptography'))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PEERD_HOME", "RUNTIME_DIRECTORY")}
    done = await trio.run_process([sys.executable, "-c", probe], capture_stdout=True, check=True, env=env)
    last = done.stdout.decode().strip().splitlines()[-1]
    assert json.loads(last) == {"code": 0, "heavy": []}
