"""Prometheus metrics of one node, served on loopback from the node's own registry.

Owns what an operator scrapes:

* ``Metrics``: a private ``CollectorRegistry`` (never prometheus_client's global
  default one), the latency histograms the daemon feeds
  (``observe_negotiation``, ``observe_executor_overhead``, ``observe_placement``),
  the process collector, and a collector that turns a ``NodeSample`` (taken by
  the node at scrape time) into gauges and counters;
* ``listen_address``: the ``metrics.listen`` check — a literal loopback address
  and a port, anything else is a ``MetricsAddressError``;
* ``MetricsServer``: a small trio HTTP responder, ``GET /metrics`` →
  ``200 text/plain; version=0.0.4``;
* ``status_counters``: the same figures as flat counters for ``peerd status``.

Nothing happens at import: registries, histograms and sockets exist only once a
``Metrics`` or ``MetricsServer`` is made.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from peerd.daemon.httpserve import (
    PLAIN_TEXT,
    Sender,
    http_url,
    new_connection,
    open_listeners,
    read_request,
    serve_connections,
)
from peerd.errors import ConfigError, PeerdError
from peerd.executor.gpus import CapacityLedger
from peerd.market.peertable import AdvertVerdict
from protocol.messages import TaskState
from protocol.roles import NodeRole, TaskRole

log = logging.getLogger(__name__)

ADVERT_OUTCOMES = frozenset(o.value for o in AdvertVerdict)

NEGOTIATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PLACEMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 8


class MetricsError(PeerdError):
    """The metrics endpoint cannot be served."""


class MetricsAddressError(MetricsError, ConfigError):
    """``metrics.listen`` is not a loopback ``address:port``."""


# ---------------------------------------------------------------- the listen address
def listen_address(text: str, setting: str = "metrics.listen") -> tuple[str, int] | None:
    """``metrics.listen`` (or another loopback-only ``setting``) as (host, port); None when empty (off).

    Accepts ``127.0.0.1:9464``, ``[::1]:9464`` and ``localhost:9464`` (taken as
    127.0.0.1); port 0 picks a free port. Anything not on loopback is refused:
    the endpoint has no authentication.
    """
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise MetricsAddressError(f"{setting} {text!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise MetricsAddressError(
            f"{setting} {text!r}: {host!r} is not an IP address; use 127.0.0.1 or ::1"
        ) from exc
    if not address.is_loopback:
        raise MetricsAddressError(
            f"{setting} {text!r}: {host} is not a loopback address; the endpoint has no "
            "authentication, so it only listens on 127.0.0.0/8 or ::1 (reach it through a local agent or tunnel)"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsAddressError(f"{setting} {text!r}: the port must be a number from 0 to 65535")
    return str(address), int(port_text)


# ---------------------------------------------------------------- what the node reports
@dataclass(frozen=True)
class GpuLeases:
    leases: int  # reservations (holds or confirmed) that include at least one GPU
    gpus: int  # GPUs held by them


def gpu_leases(ledger: CapacityLedger | None) -> GpuLeases:
    if ledger is None:
        return GpuLeases(0, 0)
    with_gpus = [r for r in ledger.reservations() if r.gpus]
    return GpuLeases(len(with_gpus), sum(len(r.gpus) for r in with_gpus))


@dataclass(frozen=True)
class NodeSample:
    """The node's figures at one moment, taken by the node for a scrape or a status."""

    peer_id: str
    role: NodeRole
    version: str
    peers_known: int
    peers_connected: int
    p2p_counters: Mapping[str, int]  # P2PService.counters: advert outcomes and network events
    tasks: Mapping[tuple[str, str], int]  # (task role, TaskState value) -> number of tasks
    jobs_running: int  # provider jobs with a live container
    gpu_leases: GpuLeases
    draining: bool
    config_reloads: int  # SIGHUP reloads applied
    config_reload_errors: int  # SIGHUP reloads refused (config unreadable or invalid)


def status_counters(sample: NodeSample) -> dict[str, int]:
    """Flat counters for ``peerd status``: p2p counters, non-zero task counts, GPU leases."""
    out = dict(sample.p2p_counters)
    for (role, state), count in sorted(sample.tasks.items()):
        if count:
            out[f"tasks.{role}.{state}"] = count
    out["gpu_leases"] = sample.gpu_leases.leases
    out["gpus_leased"] = sample.gpu_leases.gpus
    out["config_reloads"] = sample.config_reloads
    out["config_reload_errors"] = sample.config_reload_errors
    return out


class _SampleCollector:
    """Turns the latest ``NodeSample`` into metric families (set just before each render)."""

    def __init__(self) -> None:
        self.sample: NodeSample | None = None

    def describe(self) -> list[Metric]:
        return []  # families depend on the sample; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        sample = self.sample
        if sample is None:
            return
        info = GaugeMetricFamily("peerd_node_info", "This node.", labels=["peer_id", "role", "version"])
        info.add_metric([sample.peer_id, sample.role.value, sample.version], 1)
        yield info
        yield GaugeMetricFamily("peerd_peers_known", "Peers with a live advert in the peer table.",
                                value=sample.peers_known)
        yield GaugeMetricFamily("peerd_peers_connected", "Peers with an open libp2p connection.",
                                value=sample.peers_connected)
        yield from _p2p_families(sample.p2p_counters)
        tasks = GaugeMetricFamily("peerd_tasks", "Tasks in the node's store, by side and state.",
                                  labels=["role", "state"])
        for role in TaskRole:
            for state in TaskState:
                tasks.add_metric([role.value, state.value], sample.tasks.get((role.value, state.value), 0))
        yield tasks
        yield GaugeMetricFamily("peerd_jobs_running", "Provider jobs whose container runs here.",
                                value=sample.jobs_running)
        yield GaugeMetricFamily("peerd_gpu_leases", "Capacity reservations (held or leased) that include GPUs.",
                                value=sample.gpu_leases.leases)
        yield GaugeMetricFamily("peerd_gpus_leased", "GPUs held by those reservations.",
                                value=sample.gpu_leases.gpus)
        yield GaugeMetricFamily("peerd_draining", "1 while the node drains (takes no new tasks).",
                                value=int(sample.draining))
        yield CounterMetricFamily("peerd_config_reloads", "Policy reloads by SIGHUP, applied.",
                                  value=sample.config_reloads)
        yield CounterMetricFamily("peerd_config_reload_errors", "Policy reloads by SIGHUP, refused (bad config).",
                                  value=sample.config_reload_errors)


def _p2p_families(counters: Mapping[str, int]) -> Iterator[Metric]:
    adverts = CounterMetricFamily("peerd_adverts", "Received adverts, by outcome (accepted or why dropped).",
                                  labels=["outcome"])
    events = CounterMetricFamily("peerd_p2p_events", "Network events: publishes, syncs, handler errors.",
                                 labels=["event"])
    for name in sorted(ADVERT_OUTCOMES):
        adverts.add_metric([name], counters.get(name, 0))
    for name, value in sorted(counters.items()):
        if name not in ADVERT_OUTCOMES:
            events.add_metric([name], value)
    yield adverts
    yield events


class Metrics:
    """The node's registry. Always present; served only when ``metrics.listen`` is set."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sample = _SampleCollector()
        self.registry.register(self._sample)
        ProcessCollector(registry=self.registry)
        self._negotiation = Histogram(
            "peerd_negotiation_seconds", "One negotiation, request sent to lease signed by both.",
            buckets=NEGOTIATION_BUCKETS, registry=self.registry,
        )
        self._overhead = Histogram(
            "peerd_executor_overhead_seconds", "Executor time around a job: start plus teardown.",
            buckets=OVERHEAD_BUCKETS, registry=self.registry,
        )
        self._placement = Histogram(
            "peerd_placement_seconds", "Submit to lease: placement as a requester sees it, retries included.",
            buckets=PLACEMENT_BUCKETS, registry=self.registry,
        )

    def observe_negotiation(self, seconds: float) -> None:
        self._negotiation.observe(max(seconds, 0.0))

    def observe_executor_overhead(self, seconds: float) -> None:
        self._overhead.observe(max(seconds, 0.0))

    def observe_placement(self, seconds: float) -> None:
        self._placement.observe(max(seconds, 0.0))

    def render(self, sample: NodeSample) -> bytes:
        """The text exposition format (0.0.4) with ``sample`` as the node's current figures."""
        self._sample.sample = sample
        return generate_latest(self.registry)


# ---------------------------------------------------------------- the HTTP responder
@dataclass(frozen=True)
class _Response:
    status: str
    content_type: str
    body: bytes


SampleSource = Callable[[], Awaitable[NodeSample]]


class MetricsServer:
    """Serves ``GET /metrics`` on one loopback address until cancelled."""

    def __init__(self, metrics: Metrics, sample: SampleSource, address: tuple[str, int]) -> None:
        self.metrics = metrics
        self._sample = sample
        self.address = address
        self.port: int | None = None
        self._routes: dict[str, Callable[[], Awaitable[_Response]]] = {
            "/metrics": self._metrics_page,
            "/": self._index_page,
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound port, serve until cancelled."""
        listeners, self.port = await open_listeners(self.address, "metrics.listen", MetricsError)
        await serve_connections(listeners, self._serve, name="metrics", max_connections=MAX_CONNECTIONS,
                                url=http_url(self.address[0], self.port, "/metrics"), task_status=task_status)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = new_connection()
        send = Sender(conn, stream)
        with trio.move_on_after(REQUEST_TIMEOUT):
            request = await read_request(conn, stream)
            if request is None:
                await send.bad_request()
                return
            method = request.method.decode("latin-1")
            route = self._routes.get(request.target.decode("latin-1").split("?", 1)[0])
            if method not in ("GET", "HEAD"):
                response = _Response("405 Method Not Allowed", PLAIN_TEXT, b"GET only\n")
            elif route is None:
                response = _Response("404 Not Found", PLAIN_TEXT, b"not found; try /metrics\n")
            else:
                response = await route()
            body = b"" if method == "HEAD" else response.body
            await send.whole(response.status, response.content_type, body, len(response.body))

    async def _metrics_page(self) -> _Response:
        sample = await self._sample()
        return _Response("200 OK", CONTENT_TYPE_PLAIN_0_0_4, self.metrics.render(sample))

    async def _index_page(self) -> _Response:
        return _Response("200 OK", PLAIN_TEXT, b"peerd metrics: /metrics\n")


__all__ = [
    "GpuLeases",
    "Metrics",
    "MetricsAddressError",
    "MetricsError",
    "MetricsServer",
    "NodeSample",
    "gpu_leases",
    "listen_address",
    "status_counters",
]
