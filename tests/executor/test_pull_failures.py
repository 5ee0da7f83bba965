"""A failed pull says why: not found, unauthorized, registry unreachable, timeout.

Real dockerd, registries on loopback only (tests/executor/registry.py): one
that has no such manifest, one that wants credentials, a closed port, and one
that accepts the connection and never answers.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from peerd.executor.engine import Engine, classify_pull_failure
from peerd.executor.errors import ImageUnavailable, PullFailure, Reason
from tests.executor.registry import Registry

NAME = "peerd-test/pull-failure"


class Missing(Registry):
    """A registry with no manifest for anything (what a real one answers to an unknown tag)."""

    def respond(self, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
        if path == "/v2/":
            return super().respond(method, path)
        body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1"}}]}'
        return "404 Not Found", {"Content-Type": "application/json"}, body


class Locked(Registry):
    """A registry that wants credentials for everything."""

    def respond(self, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        return "401 Unauthorized", {"Content-Type": "application/json", "WWW-Authenticate": 'Basic realm="t"'}, body


async def silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = await Engine.connect()
    yield engine
    engine.close()


async def serve(nursery: trio.Nursery, handler: object) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def failure(engine: Engine, image: str, timeout: float = 20.0) -> ImageUnavailable:
    with trio.fail_after(timeout + 10), pytest.raises(ImageUnavailable) as raised:
        await engine.pull(image, timeout=timeout, on_progress=None)
    assert raised.value.reason is Reason.IMAGE_UNAVAILABLE and image in raised.value.detail
    return raised.value


@pytest.mark.docker
async def test_a_failed_pull_says_why(engine: Engine, nursery: trio.Nursery) -> None:
    missing = await serve(nursery, Missing.with_busybox(NAME, "1").handle)
    locked = await serve(nursery, Locked.with_busybox(NAME, "1").handle)
    mute = await serve(nursery, silent)
    cases = [
        (f"127.0.0.1:{missing}/{NAME}:1", PullFailure.NOT_FOUND, 20.0),
        (f"127.0.0.1:{locked}/{NAME}:1", PullFailure.UNAUTHORIZED, 20.0),
        (f"127.0.0.1:{closed_port()}/{NAME}:1", PullFailure.UNREACHABLE, 20.0),
        (f"127.0.0.1:{mute}/{NAME}:1", PullFailure.TIMEOUT, 2.0),
    ]
    for image, why, timeout in cases:
        error = await failure(engine, image, timeout)
        assert error.why is why, error.detail
        assert error.detail.startswith(f"{why.value}: ")


@pytest.mark.parametrize(("message", "why"), [
    ("pull access denied for x, repository does not exist or may require 'docker login': denied: requested "
     "access to the resource is denied", PullFailure.UNAUTHORIZED),
    ("manifest for x:1 not found: manifest unknown: manifest unknown", PullFailure.NOT_FOUND),
    ('Get "https://r.example/v2/": dial tcp: lookup r.example: no such host', PullFailure.UNREACHABLE),
    ('Get "https://r.example/v2/": net/http: request canceled (Client.Timeout exceeded)', PullFailure.TIMEOUT),
    ("something else entirely", PullFailure.OTHER),
])
def test_dockerds_messages_are_classified(message: str, why: PullFailure) -> None:
    assert classify_pull_failure(message) is why
