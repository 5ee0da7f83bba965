"""What a dashboard request asks for: method, target and Host header in, a ``Plan`` out. Pure.

The dashboard is read-only (GET and HEAD; anything else is 405) and answers only
requests addressed to the loopback name it listens on (the Host check stops a
DNS-rebinding page from reading it). Every response carries the same security
headers: a same-origin Content-Security-Policy, ``nosniff``, no framing, no
caching, and no CORS header at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs, unquote, urlsplit

from peerd.daemon.metrics import MetricsAddressError, listen_address
from peerd.errors import ConfigError

SETTING = "dashboard.listen"

STATIC = {  # path -> (file under static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
     "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)

TASK_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # path segments only; the node decides whether it exists
DEFAULT_TASKS = 50
MAX_TASKS = 500
DEFAULT_RECEIPTS = 1000
MAX_RECEIPTS = 10000


class DashboardAddressError(MetricsAddressError, ConfigError):
    """``dashboard.listen`` is not a loopback ``address:port``."""


def dashboard_address(text: str) -> tuple[str, int] | None:
    """``dashboard.listen`` as (host, port); None when empty (off). Loopback only, as for metrics."""
    try:
        return listen_address(text, SETTING)
    except MetricsAddressError as exc:
        raise DashboardAddressError(str(exc)) from None


class Kind(Enum):
    STATIC = "static"  # name: a file under static/
    STATUS = "status"
    PEERS = "peers"
    TASKS = "tasks"  # limit
    TASK = "task"  # task_id
    RECEIPTS = "receipts"  # limit
    SNAPSHOTS = "snapshots"  # server-sent events: the node's views as they change
    LOGS = "logs"  # server-sent events: a task's log chunks; task_id
    REFUSED = "refused"  # status, reason


@dataclass(frozen=True)
class Plan:
    kind: Kind
    name: str = ""  # STATIC: the file; REFUSED: the status line
    content_type: str = ""
    task_id: str = ""
    limit: int = 0
    reason: str = ""  # REFUSED: the text sent

    @property
    def streams(self) -> bool:
        return self.kind in (Kind.SNAPSHOTS, Kind.LOGS)


def refused(status: str, reason: str) -> Plan:
    return Plan(Kind.REFUSED, name=status, reason=reason)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host header values a request to this server may carry (no port only when it is 80)."""
    names = {f"[{host}]" if ":" in host else host, "localhost"}
    return frozenset({f"{n}:{port}" for n in names} | ({*names} if port == 80 else set()))


def plan(method: str, target: str, host_header: str | None, hosts: frozenset[str]) -> Plan:
    """The plan for one request."""
    if host_header is None or host_header.lower() not in hosts:
        return refused("421 Misdirected Request", "this dashboard answers only on its loopback address\n")
    if method not in ("GET", "HEAD"):
        return refused("405 Method Not Allowed", "the dashboard is read-only: GET only\n")
    parts = urlsplit(target)
    path, query = parts.path, parse_qs(parts.query)
    if path in STATIC:
        name, content_type = STATIC[path]
        return Plan(Kind.STATIC, name=name, content_type=content_type)
    fixed = {"/api/status": Kind.STATUS, "/api/peers": Kind.PEERS, "/api/events": Kind.SNAPSHOTS}
    if path in fixed:
        return Plan(fixed[path])
    if path == "/api/tasks":
        return _limited(Kind.TASKS, query, DEFAULT_TASKS, MAX_TASKS)
    if path == "/api/receipts":
        return _limited(Kind.RECEIPTS, query, DEFAULT_RECEIPTS, MAX_RECEIPTS)
    if path.startswith("/api/tasks/"):
        return _task_plan(path.removeprefix("/api/tasks/"))
    return refused("404 Not Found", "not found\n")


def _task_plan(rest: str) -> Plan:
    task_id, _, tail = rest.partition("/")
    task_id = unquote(task_id)
    if not TASK_ID.fullmatch(task_id):
        return refused("404 Not Found", "no such task\n")
    if tail == "":
        return Plan(Kind.TASK, task_id=task_id)
    if tail == "logs":
        return Plan(Kind.LOGS, task_id=task_id)
    return refused("404 Not Found", "not found\n")


def _limited(kind: Kind, query: dict[str, list[str]], default: int, most: int) -> Plan:
    text = query.get("limit", [str(default)])[-1]
    if not text.isdigit() or not 1 <= int(text) <= most:
        return refused("400 Bad Request", f"limit must be a number from 1 to {most}\n")
    return Plan(kind, limit=int(text))
