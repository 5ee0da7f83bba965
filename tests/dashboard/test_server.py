"""The dashboard server over real loopback sockets and a stub node: JSON views, streams, refusals, headers."""

from __future__ import annotations

import trio

from ..control.stub import PEER_ID, PROVIDER
from .client import EventStream, request
from .conftest import Served

XSS = b"<img src=x onerror=alert(1)>\n"


def assert_safe_headers(headers: dict[str, str]) -> None:
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert not any(name.startswith("access-control-") for name in headers)


async def test_the_page_is_served_with_security_headers(served: Served) -> None:
    with trio.fail_after(10):
        page = await request(served.port, "/")
        script = await request(served.port, "/app.js")
        head = await request(served.port, "/", method="HEAD")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'<script src="/app.js"' in page.body
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    assert b"innerHTML" not in script.body and b"insertAdjacentHTML" not in script.body
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) == len(page.body)
    for answer in (page, script, head):
        assert_safe_headers(answer.headers)


async def test_api_answers_with_the_nodes_views(served: Served) -> None:
    ops = served.ops
    done = ops.add_task(("echo", "hi"))
    done.finish(0, b"hi\n")
    with trio.fail_after(10):
        status = (await request(served.port, "/api/status")).json()
        peers = (await request(served.port, "/api/peers")).json()
        tasks = await request(served.port, "/api/tasks?limit=5")
        task = (await request(served.port, f"/api/tasks/{done.task_id}")).json()
        receipts = (await request(served.port, "/api/receipts")).json()
    assert status == await ops.status()
    assert peers == await ops.peers()
    assert tasks.headers["content-type"] == "application/json" and tasks.json() == await ops.tasks(5)
    assert task == done.view() and task["attempts"] == [
        {"provider": PROVIDER, "outcome": "succeeded", "reason": "", "detail": ""}]
    assert receipts == await ops.receipts(1000) and receipts[0]["requester"] == PEER_ID
    assert ("tasks", {"limit": 5}) in ops.calls


async def test_refusals(served: Served) -> None:
    port = served.port
    with trio.fail_after(10):
        missing = await request(port, "/api/tasks/nope")
        post = await request(port, "/api/tasks/t0001", method="POST")
        rebound = await request(port, "/api/status", host=f"evil.example:{port}")
        unknown = await request(port, "/admin")
        garbage = await request(port, "/", raw=b"\x16\x03\x01 not http at all\r\n\r\n")
    assert missing.status == 404 and missing.json() == {"error": "no task 'nope'"}
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
    assert rebound.status == 421 and b"loopback" in rebound.body
    assert unknown.status == 404
    assert garbage.status == 400
    for answer in (missing, post, rebound, unknown, garbage):
        assert_safe_headers(answer.headers)
    assert not any(op in ("cancel", "submit", "drain") for op, _ in served.ops.calls)


async def test_a_node_bug_closes_only_its_connection(served: Served) -> None:
    with trio.fail_after(10):
        bug = await request(served.port, "/api/tasks/boom")  # the stub raises RuntimeError: a node bug
        assert bug.status == 0  # connection closed without an answer, logged
        after = await request(served.port, "/api/status")
    assert after.status == 200


async def test_events_stream_each_view_and_then_what_changed(served: Served) -> None:
    with trio.fail_after(10):
        events = await EventStream.open(served.port, "/api/events")
        try:
            assert events.status == 200 and events.headers["content-type"].startswith("text/event-stream")
            assert_safe_headers(events.headers)
            first = {}
            for _ in range(4):
                got = await events.next()
                assert got is not None
                first[got[0]] = got[1]
            assert set(first) == {"status", "peers", "tasks", "receipts"}
            assert first["tasks"] == "[]"
            served.ops.add_task(("hang",))
            tasks = await events.until("tasks")  # only what changed is sent again
            assert [t["task_id"] for t in tasks] == ["t0001"]  # type: ignore[index]
        finally:
            await events.aclose()


async def test_receipts_in_the_stream_leave_out_the_cosigned_bytes(served: Served) -> None:
    served.ops.add_task(("echo",)).finish(0, b"")
    with trio.fail_after(10):
        events = await EventStream.open(served.port, "/api/events")
        try:
            receipts = await events.until("receipts")
        finally:
            await events.aclose()
    assert receipts == [{"task_id": "t0001", "provider": PROVIDER, "requester": PEER_ID, "cost": 0.25,
                         "state": "succeeded", "verified": True}]


async def test_logs_stream_live_as_text_and_end(served: Served) -> None:
    task = served.ops.add_task(("hang",))
    served.ops.add_output(task.task_id, XSS)
    with trio.fail_after(10):
        logs = await EventStream.open(served.port, f"/api/tasks/{task.task_id}/logs")
        try:
            assert await logs.until("chunk") == {"stream": "stdout", "text": XSS.decode()}
            served.ops.add_output(task.task_id, b"\xffmore\n")
            assert await logs.until("chunk") == {"stream": "stdout", "text": "\ufffdmore\n"}
            task.finish(0, b"")
            assert await logs.until("end") == {}
            assert await logs.next() is None  # the server ends the response
        finally:
            await logs.aclose()
    assert ("logs", {"task_id": task.task_id, "follow": True}) in served.ops.calls


async def test_logs_of_an_unknown_task_are_404(served: Served) -> None:
    with trio.fail_after(10):
        answer = await request(served.port, "/api/tasks/nope/logs")
    assert answer.status == 404


async def test_a_reader_going_away_closes_its_log_follow(served: Served) -> None:
    task = served.ops.add_task(("hang",))
    served.ops.add_output(task.task_id, b"line\n")
    with trio.fail_after(10):
        logs = await EventStream.open(served.port, f"/api/tasks/{task.task_id}/logs")
        await logs.until("chunk")
        await logs.aclose()
        await served.ops.follow_closed.wait()  # the heartbeat finds the closed socket, the follow is closed
