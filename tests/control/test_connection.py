"""Connection behaviour: handshake, hostile bytes, concurrency, streams, limits."""

from __future__ import annotations

import struct
from pathlib import Path

import trio

from peerd.control.client import ControlClient
from peerd.control.server import ControlServer
from peerd.control.wire import REQUEST_MAX_FRAME
from protocol.codec import encode, frame
from protocol.messages import ControlError, ControlResponse
from protocol.schema import Value

from .harness import Daemon, RawClient, call
from .stub import StubOps


async def assert_still_serving(daemon: Daemon) -> None:
    status = await call(daemon.path, "status")
    assert isinstance(status, dict) and status["peer_id"].startswith("12D3KooW")  # type: ignore[union-attr]


async def test_first_request_must_be_hello(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.send_request(1, "status", {})
    response = await raw.response()
    assert response.error is not None and response.error.code == "hello_required"
    assert response.id == 1
    assert await raw.closed_by_daemon()
    assert daemon.ops.calls == []


async def test_hello_with_another_version_is_refused_and_closed(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.send_request(1, "hello", {"version": 2, "client": "future"})
    response = await raw.response()
    assert response.error is not None and response.error.code == "unsupported_version"
    assert await raw.closed_by_daemon()


async def test_failed_hello_does_not_open_the_connection(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.send_request(1, "hello", {"version": 1})  # no client name
    response = await raw.response()
    assert response.error is not None and response.error.code == "bad_args"
    assert await raw.closed_by_daemon()


async def test_hello_reply(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    response = await raw.hello()
    assert response.error is None and response.id == 1 and not response.more
    assert response.result == {"version": 1, "daemon": "0.1.0"}


async def test_random_bytes_close_the_connection_and_daemon_survives(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.stream.send_all(b"\xff\xfe" + bytes(range(256)) * 4)
    await raw.expect_refusal("malformed")
    await assert_still_serving(daemon)


async def test_malformed_frame_gets_an_error_then_close(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.stream.send_all(frame(b"\xc1 not msgpack"))
    response = await raw.response()
    assert response.error is not None and response.error.code == "malformed"
    assert await raw.closed_by_daemon()
    await assert_still_serving(daemon)


async def test_wrong_message_type_is_malformed(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    wrong = ControlResponse(id=1, result=None, error=ControlError(code="x", message=""))
    await raw.stream.send_all(frame(encode(wrong)))
    response = await raw.response()
    assert response.error is not None and response.error.code == "malformed"
    assert "expected a control request" in response.error.message
    assert await raw.closed_by_daemon()


async def test_oversize_frame_is_closed_before_its_body(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.stream.send_all(struct.pack(">I", REQUEST_MAX_FRAME + 1))
    response = await raw.response()
    assert response.error is not None and response.error.code == "malformed"
    assert "exceeds" in response.error.message
    assert await raw.closed_by_daemon()
    await assert_still_serving(daemon)


async def test_truncated_frame_then_hang_up(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.stream.send_all(struct.pack(">I", 100) + b"short")
    await raw.stream.send_eof()
    await raw.expect_refusal("malformed")
    await assert_still_serving(daemon)


async def test_a_bug_in_an_operation_is_internal_and_daemon_survives(daemon: Daemon) -> None:
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.send_request(2, "task", {"task_id": "boom"})
    response = await raw.response()
    assert response.error is not None and response.error.code == "internal"
    assert response.id == 2
    assert await raw.closed_by_daemon()
    await assert_still_serving(daemon)


async def test_several_clients_at_once(daemon: Daemon) -> None:
    task = daemon.ops.add_task(("hang",))
    results: list[Value] = []

    async def waiter() -> None:
        results.append(await call(daemon.path, "wait", {"task_id": task.task_id}))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(waiter)
            while daemon.ops.waiters < 5:  # all five blocked in the node at once
                daemon.ops.waiter_joined = trio.Event()
                await daemon.ops.waiter_joined.wait()
            await assert_still_serving(daemon)  # a sixth is answered meanwhile
            assert results == []
            task.finish(0, b"done\n")
    assert len(results) == 5 and all(r["stdout"] == "done\n" for r in results)  # type: ignore[index]


async def test_followed_logs_stream_until_the_task_ends(daemon: Daemon) -> None:
    task = daemon.ops.add_task(("hang",))
    daemon.ops.add_output(task.task_id, b"one\n")
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.send_request(2, "logs", {"task_id": task.task_id, "follow": True})
    first = await raw.response()
    assert first.more and first.result == {"stream": "stdout", "data": b"one\n"}
    daemon.ops.add_output(task.task_id, b"two\n")
    second = await raw.response()
    assert second.more and second.result == {"stream": "stdout", "data": b"two\n"}
    task.finish(0, b"")
    final = await raw.response()
    assert not final.more and final.result is None and final.error is None and final.id == 2


async def test_client_hang_up_cancels_a_followed_stream(daemon: Daemon) -> None:
    task = daemon.ops.add_task(("hang",))
    daemon.ops.add_output(task.task_id, b"one\n")
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.send_request(2, "logs", {"task_id": task.task_id, "follow": True})
    assert (await raw.response()).more
    await raw.aclose()
    with trio.fail_after(10):
        await daemon.ops.follow_closed.wait()
    assert not task.done.is_set()


async def test_streamed_events(daemon: Daemon) -> None:
    task = daemon.ops.add_task(("hang",))

    def run() -> list[Value]:
        with ControlClient(daemon.path) as client:
            return list(client.stream("events", {"task_id": task.task_id}))

    async with trio.open_nursery() as nursery:
        events: list[list[Value]] = []
        nursery.start_soon(lambda: _collect(run, events))
        task.finish(0, b"")
    assert [e["state"] for e in events[0]] == ["placing", "succeeded"]  # type: ignore[index]


async def _collect(run: object, into: list[list[Value]]) -> None:
    into.append(await trio.to_thread.run_sync(run))  # type: ignore[arg-type]


async def test_oversize_response_is_an_error_not_a_crash(daemon: Daemon) -> None:
    task = daemon.ops.add_task(("big",))
    task.finish(0, b"x" * (17 << 20))
    raw = await RawClient.open(daemon.path)
    await raw.hello()
    await raw.send_request(2, "task", {"task_id": task.task_id})
    response = await raw.response()
    assert response.error is not None and response.error.code == "response_too_large"
    await raw.send_request(3, "status", {})
    assert (await raw.response()).error is None


async def test_idle_client_is_closed(nursery: trio.Nursery, sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    await nursery.start(ControlServer(path, StubOps(), idle_timeout=0.2).run)
    raw = await RawClient.open(path)
    assert await raw.closed_by_daemon()
