"""What a request asks for: the read-only rule, the Host check, paths and limits (pure)."""

from __future__ import annotations

import pytest

from peerd.dashboard.routing import (
    DashboardAddressError,
    Kind,
    allowed_hosts,
    dashboard_address,
    plan,
)
from peerd.errors import ConfigError

HOSTS = allowed_hosts("127.0.0.1", 9470)


def test_the_listen_address_is_loopback_only_like_metrics() -> None:
    assert dashboard_address("") is None
    assert dashboard_address("127.0.0.1:9470") == ("127.0.0.1", 9470)
    assert dashboard_address("localhost:0") == ("127.0.0.1", 0)
    for text in ("0.0.0.0:9470", "192.168.1.2:9470", "[::]:9470", "dash.example:9470"):
        with pytest.raises(DashboardAddressError, match="dashboard.listen") as caught:
            dashboard_address(text)
        assert isinstance(caught.value, ConfigError)


def test_only_its_own_loopback_names_are_answered() -> None:
    assert HOSTS == {"127.0.0.1:9470", "localhost:9470"}
    assert allowed_hosts("::1", 80) == {"[::1]:80", "localhost:80", "[::1]", "localhost"}
    assert plan("GET", "/api/status", "LOCALHOST:9470", HOSTS).kind is Kind.STATUS
    for host in (None, "evil.example:9470", "127.0.0.1:9471", "127.0.0.1", "attacker.example"):
        refused = plan("GET", "/api/status", host, HOSTS)
        assert refused.kind is Kind.REFUSED and refused.name.startswith("421"), host


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_it_is_read_only(method: str) -> None:
    refused = plan(method, "/api/tasks/t0001", "127.0.0.1:9470", HOSTS)
    assert refused.kind is Kind.REFUSED and refused.name.startswith("405")


@pytest.mark.parametrize(
    ("target", "kind", "task_id", "limit"),
    [
        ("/", Kind.STATIC, "", 0),
        ("/app.js?v=1", Kind.STATIC, "", 0),
        ("/api/status", Kind.STATUS, "", 0),
        ("/api/peers", Kind.PEERS, "", 0),
        ("/api/tasks", Kind.TASKS, "", 50),
        ("/api/tasks?limit=7", Kind.TASKS, "", 7),
        ("/api/receipts?limit=3", Kind.RECEIPTS, "", 3),
        ("/api/tasks/t0001", Kind.TASK, "t0001", 0),
        ("/api/tasks/t0001/logs", Kind.LOGS, "t0001", 0),
        ("/api/events", Kind.SNAPSHOTS, "", 0),
    ],
)
def test_paths(target: str, kind: Kind, task_id: str, limit: int) -> None:
    p = plan("GET", target, "localhost:9470", HOSTS)
    assert (p.kind, p.task_id, p.limit) == (kind, task_id, limit)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/static/../../etc/passwd", "404"),
        ("/api/tasks/..%2F..%2Fetc", "404"),
        ("/api/tasks/" + "x" * 65, "404"),
        ("/api/tasks/t1/cancel", "404"),
        ("/api/tasks?limit=0", "400"),
        ("/api/tasks?limit=-1", "400"),
        ("/api/receipts?limit=99999999", "400"),
        ("/api/tasks?limit=many", "400"),
    ],
)
def test_what_is_not_served(target: str, status: str) -> None:
    p = plan("GET", target, "localhost:9470", HOSTS)
    assert p.kind is Kind.REFUSED and p.name.startswith(status)
