"""Garbage on /peerd/task/1.0.0 over real libp2p: a protocol error, a closed stream, and a
provider process that keeps serving everyone else."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import trio

from peerd.config import NetworkConfig
from peerd.devnet import DevNet
from peerd.p2p.errors import P2PError
from peerd.p2p.service import P2PService
from protocol.codec import frame
from protocol.messages import Accept
from protocol.negotiation import TASK_PROTOCOL
from protocol.signing import Signer, seal_bytes
from tests.integration.cli import start_nodes

pytestmark = pytest.mark.docker  # needs a real dockerd

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
NET = NetworkConfig(advert_interval=30.0, advert_ttl=60.0, connect_timeout=5.0, io_timeout=5.0)


@pytest.fixture(scope="module")
def net() -> Iterator[DevNet]:
    with DevNet() as devnet:
        yield start_nodes(devnet)


async def _answer(client: P2PService, provider: str, addrs: list[str], data: bytes) -> bytes:
    """Write ``data`` on a fresh task stream and read until the provider closes it."""
    received = b""
    try:
        async with client.open_stream(provider, TASK_PROTOCOL, addrs) as stream:
            await stream.write(data)
            with trio.fail_after(15):
                while chunk := await stream.read(65536, timeout=15):
                    received += chunk
    except P2PError:
        pass  # a reset stream is a closed stream too
    return received


async def test_garbage_oversize_and_illegal_orders_close_only_that_stream(net: DevNet) -> None:
    provider = net.nodes["provider"]
    status = await trio.to_thread.run_sync(provider.status)
    provider_id, addrs = str(status["peer_id"]), [str(a) for a in status["addrs"]]  # type: ignore[union-attr]
    stranger = Signer.generate()
    client = P2PService(stranger, ["/ip4/127.0.0.1/tcp/0"], [], seed=False, net=NET, advert_source=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert await _answer(client, provider_id, addrs, os.urandom(4096)) == b""
        assert await _answer(client, provider_id, addrs, (1 << 31).to_bytes(4, "big") + b"x" * 64) == b""
        illegal = frame(seal_bytes(Accept(task_id="t-illegal", price=0.0), stranger))
        assert await _answer(client, provider_id, addrs, illegal) == b""
        forged = frame(seal_bytes(Accept(task_id="t-forged", price=0.0), Signer.generate()))  # not the sender's key
        assert await _answer(client, provider_id, addrs, forged) == b""
        nursery.cancel_scope.cancel()

    # the provider process is alive and still runs jobs for others
    out = await trio.to_thread.run_sync(
        lambda: net.nodes["requester"].peerd("submit", "--image", IMAGE, "--wait", "--json", "--", "echo", "fine")
    )
    view = json.loads(out.stdout)
    assert view["state"] == "succeeded" and view["stdout"] == "fine\n" and view["provider"] == provider_id
