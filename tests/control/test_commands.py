"""Every command goes through the real socket to the right node operation."""

from __future__ import annotations

import pytest
import trio

from peerd import __version__
from peerd.control.client import ControlClient
from peerd.control.commands import COMMANDS
from peerd.control.errors import ControlCallError
from peerd.control.ops import Queueing
from protocol.messages import JobSpec
from protocol.schema import Value

from .harness import Daemon, call
from .stub import PROVIDER

SPEC = JobSpec(image="peerd-test/busybox:1", command=("echo", "hi"), memory=64 << 20)

# command → (args, the stub call it must produce)
ROUTES: dict[str, tuple[dict[str, Value], tuple[str, dict[str, object]]]] = {
    "status": ({}, ("status", {})),
    "peers": ({}, ("peers", {})),
    "peer": ({"peer_id": PROVIDER, "limit": 3}, ("peer", {"peer_id": PROVIDER, "limit": 3})),
    "submit": ({"spec": SPEC.to_wire(), "local": True}, ("submit", {"spec": SPEC, "local": True})),
    "wait": ({"task_id": "t0001"}, ("wait", {"task_id": "t0001"})),
    "task": ({"task_id": "t0001"}, ("task", {"task_id": "t0001"})),
    "tasks": ({"limit": 5}, ("tasks", {"limit": 5})),
    "logs": ({"task_id": "t0001", "follow": True}, ("logs", {"task_id": "t0001", "follow": True})),
    "events": ({"task_id": "t0001"}, ("events", {"task_id": "t0001"})),
    "cancel": ({"task_id": "t0001"}, ("cancel", {"task_id": "t0001"})),
    "receipts": ({}, ("receipts", {"limit": 50})),
    "doctor": ({}, ("doctor", {})),
    "drain": ({}, ("drain", {})),
    "outputs": ({"task_id": "t0001"}, ("outputs", {"task_id": "t0001"})),
}


def test_every_command_in_the_table_has_a_route_test() -> None:
    assert set(COMMANDS) == set(ROUTES)


@pytest.mark.parametrize("command", sorted(ROUTES))
async def test_command_calls_its_operation_once(daemon: Daemon, command: str) -> None:
    daemon.ops.add_task(("echo", "x")).finish(0, b"x\n")
    args, expected = ROUTES[command]

    def run() -> list[Value]:
        with ControlClient(daemon.path) as client:
            if COMMANDS[command].stream is not None:
                return list(client.stream(command, args))
            return [client.call(command, args)]

    await trio.to_thread.run_sync(run)
    assert daemon.ops.calls == [expected]


async def test_submit_passes_inputs_on(daemon: Daemon) -> None:
    args: dict[str, Value] = {"spec": SPEC.to_wire(), "local": False,
                              "inputs": [{"source": "/data/x", "dest": "/inputs/x"}]}
    await call(daemon.path, "submit", args)
    assert daemon.ops.calls == [("submit", {"spec": SPEC, "local": False, "inputs": [("/data/x", "/inputs/x")]})]


@pytest.mark.parametrize("inputs", [[{"source": "relative", "dest": "/x"}], [{"source": "/x"}], "nope"])
async def test_submit_refuses_malformed_inputs(daemon: Daemon, inputs: Value) -> None:
    with pytest.raises(Exception, match="input"):
        await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False, "inputs": inputs})


async def test_submit_passes_a_spot_check_probability_on(daemon: Daemon) -> None:
    await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False, "spot_check": 0.25})
    assert daemon.ops.calls == [("submit", {"spec": SPEC, "local": False, "spot_check": 0.25})]


@pytest.mark.parametrize("extra", [{"spot_check": 1.5}, {"spot_check": -0.1}, {"spot_check": True},
                                   {"spot_check": 0.5, "replicas": 3}, {"spot_check": 0.5, "local": True}])
async def test_submit_refuses_a_bad_spot_check(daemon: Daemon, extra: dict[str, Value]) -> None:
    with pytest.raises(Exception, match="spot_check|verification|replicas"):
        await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False, **extra})
    assert daemon.ops.calls == []


async def test_hello_reports_versions(daemon: Daemon) -> None:
    def run() -> str:
        with ControlClient(daemon.path) as client:
            return client.daemon_version

    assert await trio.to_thread.run_sync(run) == __version__


async def test_submit_then_wait_returns_the_task_view(daemon: Daemon) -> None:
    submitted = await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False})
    assert isinstance(submitted, dict)
    view = await call(daemon.path, "wait", {"task_id": submitted["task_id"]})
    assert isinstance(view, dict)
    assert view["state"] == "succeeded" and view["exit_code"] == 0 and view["stdout"] == "hi\n"
    assert view["receipt"] == {"task_id": submitted["task_id"], "provider": view["provider"],
                               "requester": view["receipt"]["requester"], "cost": 0.25,  # type: ignore[index]
                               "state": "succeeded", "verified": True, "cosigned": "8a01"}


@pytest.mark.parametrize(
    ("command", "args", "needle"),
    [
        ("status", {"extra": 1}, "unexpected arguments: extra"),
        ("tasks", {"limit": "ten"}, "'limit' must be an integer"),
        ("tasks", {"limit": 0}, "'limit' must be an integer in [1, 1000]"),
        ("task", {}, "'task_id' must be a non-empty string"),
        ("task", {"task_id": "x" * 65}, "'task_id' is longer than 64"),
        ("logs", {"task_id": "t1", "follow": "yes"}, "'follow' must be true or false"),
        ("submit", {"spec": {"image": "x"}}, "missing field 'command'"),
        ("submit", {"spec": {**SPEC.to_wire(), "cpus": -1.0}, "local": False}, "cpus"),
    ],
)
async def test_bad_arguments_are_named(daemon: Daemon, command: str, args: dict[str, Value],
                                       needle: str) -> None:
    with pytest.raises(ControlCallError) as info:
        await call(daemon.path, command, args)
    assert info.value.code == "bad_args"
    assert needle in info.value.message
    assert daemon.ops.calls == []  # refused before the node was asked


async def test_unknown_task_is_not_found(daemon: Daemon) -> None:
    for command in ("task", "wait", "cancel"):
        with pytest.raises(ControlCallError) as info:
            await call(daemon.path, command, {"task_id": "nope"})
        assert info.value.code == "not_found", command


async def test_unknown_task_in_a_stream_is_not_found(daemon: Daemon) -> None:
    def run() -> list[Value]:
        with ControlClient(daemon.path) as client:
            return list(client.stream("logs", {"task_id": "nope"}))

    with pytest.raises(ControlCallError) as info:
        await trio.to_thread.run_sync(run)
    assert info.value.code == "not_found"


async def test_operation_refusal_is_failed_and_connection_stays(daemon: Daemon) -> None:
    def run() -> Value:
        with ControlClient(daemon.path) as client:
            with pytest.raises(ControlCallError) as info:
                client.call("cancel", {"task_id": "refuse"})
            assert info.value.code == "failed"
            assert "leased to us" in info.value.message
            return client.call("status")

    status = await trio.to_thread.run_sync(run)
    assert isinstance(status, dict) and status["role"] == "provider"


async def test_unknown_command_then_same_connection_still_works(daemon: Daemon) -> None:
    def run() -> Value:
        with ControlClient(daemon.path) as client:
            with pytest.raises(ControlCallError) as info:
                client.call("format_disk")
            assert info.value.code == "unknown_command"
            assert "format_disk" in info.value.message
            return client.call("status")

    status = await trio.to_thread.run_sync(run)
    assert isinstance(status, dict) and status["peers_connected"] == 2


async def test_submit_passes_the_queue_timeout_and_priority_on(daemon: Daemon) -> None:
    await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False, "queue_timeout": 90.0, "priority": 3})
    assert daemon.ops.calls == [("submit", {"spec": SPEC, "local": False, "queue": Queueing(timeout=90.0, priority=3)})]


@pytest.mark.parametrize("extra", [{"queue_timeout": -1.0}, {"priority": 10**6}, {"priority": "high"}])
async def test_submit_refuses_a_bad_queue_timeout_or_priority(daemon: Daemon, extra: dict[str, Value]) -> None:
    with pytest.raises(ControlCallError, match="queue_timeout|priority"):
        await call(daemon.path, "submit", {"spec": SPEC.to_wire(), "local": False, **extra})
    assert daemon.ops.calls == []
