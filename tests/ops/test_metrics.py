"""peerd.daemon.metrics: the loopback-only address check, the exposition, the trio HTTP responder."""

from __future__ import annotations

import urllib.error
import urllib.request

import prometheus_client
import pytest
import trio

from peerd.daemon.metrics import (
    GpuLeases,
    Metrics,
    MetricsAddressError,
    MetricsError,
    MetricsServer,
    NodeSample,
    gpu_leases,
    listen_address,
    status_counters,
)
from peerd.errors import ConfigError
from peerd.executor.gpus import CapacityLedger
from peerd.host.nvml import GpuInfo
from protocol.roles import NodeRole


def sample(**changes: object) -> NodeSample:
    base: dict[str, object] = dict(
        peer_id="12D3KooWtest", role=NodeRole.PROVIDER, version="0.1.0", peers_known=2, peers_connected=3,
        p2p_counters={"accepted": 4, "malformed": 1, "published": 7}, tasks={("provider", "succeeded"): 2},
        jobs_running=1, gpu_leases=GpuLeases(1, 2), draining=False, config_reloads=0, config_reload_errors=0,
    )
    base.update(changes)
    return NodeSample(**base)  # type: ignore[arg-type]


def gpu(index: int) -> GpuInfo:
    return GpuInfo(index=index, uuid=f"GPU-{index}", name="NVIDIA H100 80GB HBM3", memory_total=80 << 30,
                   memory_free=80 << 30, utilization=0, driver_version="550", compute_capability="9.0")


# ---------------------------------------------------------------- metrics.listen
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("127.3.4.5:0", ("127.3.4.5", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:9100", ("127.0.0.1", 9100)),
    ],
)
def test_loopback_addresses_are_accepted(text: str, expected: tuple[str, int] | None) -> None:
    assert listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0.0.0.0:9464", "not a loopback address"),
        ("192.168.1.10:9464", "not a loopback address"),
        ("[::]:9464", "not a loopback address"),
        ("metrics.example.com:9464", "not an IP address"),
        ("9464", "ADDRESS:PORT"),
        ("127.0.0.1:", "port"),
        ("127.0.0.1:http", "port"),
        ("127.0.0.1:65536", "port"),
    ],
)
def test_other_addresses_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(MetricsAddressError, match=says) as caught:
        listen_address(text)
    assert isinstance(caught.value, ConfigError)
    assert text in str(caught.value)


# ---------------------------------------------------------------- exposition
def test_the_exposition_carries_the_sample_and_every_task_state() -> None:
    text = Metrics().render(sample()).decode()
    lines = set(text.splitlines())
    assert {
        "peerd_peers_known 2.0",
        "peerd_peers_connected 3.0",
        'peerd_adverts_total{outcome="accepted"} 4.0',
        'peerd_adverts_total{outcome="malformed"} 1.0',
        'peerd_adverts_total{outcome="replayed"} 0.0',
        'peerd_p2p_events_total{event="published"} 7.0',
        'peerd_tasks{role="provider",state="succeeded"} 2.0',
        'peerd_tasks{role="requester",state="interrupted"} 0.0',
        "peerd_jobs_running 1.0",
        "peerd_gpu_leases 1.0",
        "peerd_gpus_leased 2.0",
        "peerd_draining 0.0",
        'peerd_node_info{peer_id="12D3KooWtest",role="provider",version="0.1.0"} 1.0',
    } <= lines
    assert 'peerd_p2p_events_total{event="accepted"}' not in text  # outcomes are not events
    assert "process_resident_memory_bytes" in text


def test_a_new_sample_replaces_the_old_one() -> None:
    metrics = Metrics()
    metrics.render(sample())
    text = metrics.render(sample(draining=True, tasks={}, config_reloads=2)).decode()
    assert "peerd_draining 1.0" in text and "peerd_config_reloads_total 2.0" in text
    assert 'peerd_tasks{role="provider",state="succeeded"} 0.0' in text


def test_histograms_observe() -> None:
    metrics = Metrics()
    metrics.observe_negotiation(0.2)
    metrics.observe_negotiation(3.0)
    metrics.observe_executor_overhead(0.04)
    metrics.observe_placement(-1.0)  # a clock step back counts as zero, never negative
    lines = set(metrics.render(sample()).decode().splitlines())
    assert {
        "peerd_negotiation_seconds_count 2.0",
        'peerd_negotiation_seconds_bucket{le="0.25"} 1.0',
        'peerd_negotiation_seconds_bucket{le="5.0"} 2.0',
        'peerd_executor_overhead_seconds_bucket{le="0.05"} 1.0',
        "peerd_placement_seconds_sum 0.0",
        "peerd_placement_seconds_count 1.0",
    } <= lines


def test_each_metrics_has_its_own_registry_and_none_touches_the_global_one() -> None:
    first, second = Metrics(), Metrics()  # the global registry would refuse the second set of names
    first.observe_negotiation(1.0)
    assert "peerd_negotiation_seconds_count 0.0" in second.render(sample()).decode()
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("peerd_") for name in global_names)


def test_gpu_leases_count_reservations_holding_gpus() -> None:
    ledger = CapacityLedger(cpus=8, memory=64 << 30, gpus=[gpu(0), gpu(1), gpu(2)])
    assert gpu_leases(ledger) == GpuLeases(0, 0)
    ledger.reserve("two", cpus=1, memory=1 << 30, gpu_count=2, now=0.0, hold_until=10.0)
    ledger.reserve("cpu-only", cpus=1, memory=1 << 30, now=0.0, hold_until=10.0)
    ledger.confirm("two", now=1.0)
    assert gpu_leases(ledger) == GpuLeases(1, 2)
    ledger.release("two")
    assert gpu_leases(ledger) == GpuLeases(0, 0)
    assert gpu_leases(None) == GpuLeases(0, 0)


def test_status_counters_flatten_the_sample() -> None:
    counters = status_counters(sample(tasks={("provider", "succeeded"): 2, ("requester", "failed"): 0}))
    assert counters["tasks.provider.succeeded"] == 2
    assert "tasks.requester.failed" not in counters  # zero counts are left out of the status
    assert counters["accepted"] == 4 and counters["gpu_leases"] == 1 and counters["gpus_leased"] == 2
    assert counters["config_reloads"] == 0 and counters["config_reload_errors"] == 0


# ---------------------------------------------------------------- the HTTP responder
async def http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_the_server_answers_scrapes_and_nothing_else(nursery: trio.Nursery) -> None:
    taken: list[NodeSample] = []

    async def source() -> NodeSample:
        taken.append(sample(peers_known=len(taken)))
        return taken[-1]

    port = await nursery.start(MetricsServer(Metrics(), source, ("127.0.0.1", 0)).run)
    body = await trio.to_thread.run_sync(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    )
    assert b"peerd_peers_known 0.0" in body
    raw = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert b"peerd_peers_known 1.0" in body  # a fresh sample per scrape
    assert len(taken) == 2

    head_only = await http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
    assert (await http(port, b"GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
    posted = await http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert posted.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in posted
    assert (await http(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")  # 1.1 without Host
    try:  # an oversize head is answered 400 and closed; the unread rest may turn the close into a reset
        oversize = await http(port, b"G" * 20000)
    except trio.BrokenResourceError:
        oversize = b"HTTP/1.1 400 (reset)"
    assert oversize.startswith(b"HTTP/1.1 400")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10).read()
        )


async def test_a_failing_scrape_closes_only_its_connection(nursery: trio.Nursery) -> None:
    calls = 0

    async def source() -> NodeSample:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return sample()

    port = await nursery.start(MetricsServer(Metrics(), source, ("127.0.0.1", 0)).run)
    assert await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert (await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")


async def test_a_busy_port_is_a_metrics_error() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match="cannot listen"):
            await MetricsServer(Metrics(), lambda: None, ("127.0.0.1", port)).run()  # type: ignore[arg-type,return-value]
