"""The node's configuration: one frozen ``Config`` with every default.

``load(home)`` reads ``<home>/config.toml`` (written commented by
``peerd init``), checks every key against the table below and returns a
``Config``. Unknown keys and bad values raise ``ConfigError`` naming the key
and the file. Command-line flags are applied on top with ``dataclasses.replace``
by the CLI, never by mutating.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peerd.errors import ConfigError
from peerd.home import CONFIG_NAME, DEFAULT_CONTROL_SOCKET, control_path, read_config_file
from peerd.market.offerguard import GuardLimits
from peerd.units import format_size, parse_duration, parse_size
from protocol.codec import DEFAULT_MAX_FRAME
from protocol.jobspec import is_digest_text
from protocol.limits import MAX_COUNT, MAX_CPUS, MAX_MEMORY, MAX_PRICE, MAX_TIMEOUT
from protocol.roles import NodeRole


@dataclass(frozen=True, slots=True)
class NodeConfig:
    role: NodeRole = NodeRole.PROVIDER
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    control_socket: str = DEFAULT_CONTROL_SOCKET
    log_level: str = "info"


DEFAULT_GPU_CAPABILITIES = ("compute", "utility")  # CUDA and nvidia-smi; graphics, video... only when configured


@dataclass(frozen=True, slots=True)
class ResourcesConfig:
    cpus: float = 0.0  # 0 = every CPU
    memory: int = 0  # 0 = all memory less reserve_memory
    reserve_memory: int = 1 << 30
    gpus: tuple[str, ...] = ("all",)  # "all", "none", or GPU UUIDs
    docker_url: str = ""  # "" = the environment's DOCKER_HOST or the local socket
    # NVIDIA driver capabilities a GPU job gets (NVIDIA_DRIVER_CAPABILITIES, set by the executor, never the job)
    gpu_capabilities: tuple[str, ...] = DEFAULT_GPU_CAPABILITIES


@dataclass(frozen=True, slots=True)
class PricingConfig:
    cpu_hour: float = 0.01
    gpu_hour: float = 0.50


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    images: tuple[str, ...] = ("*",)
    image_ids: tuple[str, ...] = ()  # pinned image ids ("sha256:..."); empty = any id
    max_timeout: float = 24 * 3600.0
    allow_network: bool = False
    max_cpus: float = 0.0  # 0 = no per-job cap beyond what is offered
    max_memory: int = 0
    max_concurrent: int = 8
    # open negotiations per requester peer (an offer holds no capacity); lapsed offers before "busy".
    # Their defaults are the offer guard's own (one default per setting).
    offers_per_peer: int = GuardLimits.offers_per_peer
    lapsed_offers: int = GuardLimits.lapse_limit


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    pids: int = 512
    tmpfs: int = 64 << 20
    log_limit: int = 1 << 20
    output_limit: int = 64 << 20
    stop_grace: float = 5.0
    drain_grace: float = 60.0


DEFAULT_LIMITS = LimitsConfig()  # components that take a limit default to these (one default per setting)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    advert_interval: float = 60.0
    advert_ttl: float = 300.0
    connect_timeout: float = 10.0
    io_timeout: float = 30.0
    keepalive: float = 5.0


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Circuit Relay v2: serving as a relay, and the reservations of a node nobody can dial.

    ``serve``: "auto" (seeds relay, others do not), "on" or "off". The limits
    are per circuit and per relay; py-libp2p's defaults (1 GiB and 1 h per
    circuit) are ours, and its 1 MiB/s per circuit is not enforced at all
    (docs/py-libp2p.md, defect 15).
    """

    serve: str = "auto"
    reservations: int = 2  # relays a node that is not publicly reachable keeps reservations on
    max_reservations: int = 32  # reservations a relay holds for others
    circuit_bytes: int = 1 << 30  # bytes per relayed connection, both directions together
    circuit_duration: float = 3600.0  # lifetime of a relayed connection
    allow_data: bool = False  # job data (blob streams) may go over a connection that runs only through a relay


RELAY_SERVE = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class RequesterConfig:
    max_attempts: int = 3
    placement_deadline: float = 60.0
    offer_hold: float = 15.0
    provider_timeout: float = 20.0
    peer_wait: float = 10.0  # with no provider known, wait this long for adverts
    queue_timeout: float = 3600.0  # how long a task may wait (queued) for a provider with room


@dataclass(frozen=True, slots=True)
class GangConfig:
    """Gang jobs (``submit --nodes N``): does this provider join them, and where the other members reach it.

    Off by default: a gang member opens a UDP port (its WireGuard endpoint) that the other members' hosts
    must reach, so an operator turns it on knowing ``endpoint_host`` is reachable and ``ports`` are open.
    """

    enabled: bool = False
    endpoint_host: str = ""  # the address other providers reach this host on (required when enabled)
    ports: tuple[int, int] = (51820, 51899)  # UDP ports for endpoints, first..last; (0, 0): any free port


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # e.g. "127.0.0.1:9464"; empty = off


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    listen: str = ""  # e.g. "127.0.0.1:9470"; empty = off; loopback only, like [metrics]


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How long finished tasks' logs and task directories are kept (receipts: forever)."""

    max_age: float = 7 * 86400.0  # 0 = no age limit
    max_size: int = 1 << 30  # bytes of kept logs + task directories; 0 = no size limit
    interval: float = 600.0  # how often the pruner runs


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The chunk store for job data (``<home>/blobs``)."""

    blob_quota: int = 10 << 30  # bytes of chunks kept; 0 = no limit
    output_retention: float = 24 * 3600.0  # how long a finished task's outputs stay pinned (and served)


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    """Images carried by requesters as job data (``peerd.data.imagedata``, ``peerd.data.imagereceive``)."""

    receive: bool = True  # accept them (the advert says so); they count against [storage] blob_quota


@dataclass(frozen=True, slots=True)
class Config:
    home: Path = Path(".")
    node: NodeConfig = field(default_factory=NodeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    requester: RequesterConfig = field(default_factory=RequesterConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    gang: GangConfig = field(default_factory=GangConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)

    @property
    def key_path(self) -> Path:
        return self.home / "node.key"

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def control_path(self) -> Path:
        return control_path(self.home, self.node.control_socket)

    @property
    def work_dir(self) -> Path:
        return self.home / "tasks"


# ---------------------------------------------------------------- value parsers
# Each parser returns the value or raises ValueError with a one-line reason;
# ``parse`` prefixes the file and the key. Every number must be finite; the
# bounds below are the protocol's (protocol.messages), so nothing a config
# accepts can fail later when it goes into an advert, a lease or a frame.
PID_MAX_LIMIT = 1 << 22  # the kernel's own ceiling for pid_max
MIN_TMPFS = 1 << 20  # /tmp size; tmpfs reads size=0 as "unlimited", so 0 is refused
MIN_LOG_LIMIT = 1 << 10
# A Result carries both output tails (stdout, stderr) in one protocol frame.
MAX_LOG_LIMIT = (DEFAULT_MAX_FRAME - (64 << 10)) // 2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _strs(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


GPU_CAPABILITIES = ("compute", "compat32", "graphics", "utility", "video", "display")  # the toolkit's; no "all"


def _gpu_capabilities(value: object) -> tuple[str, ...]:
    caps = _strs(value)
    wrong = [c for c in caps if c not in GPU_CAPABILITIES]
    if wrong or not caps:
        raise ValueError(f"expected some of {', '.join(GPU_CAPABILITIES)}, got {list(caps)!r}")
    return tuple(dict.fromkeys(caps))


def _image_ids(value: object) -> tuple[str, ...]:
    ids = _strs(value)
    for one in ids:
        if not is_digest_text(one):
            raise ValueError(f"expected image ids like sha256:<64 lowercase hex digits>, got {one!r}")
    return ids


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a finite non-negative number, got {value!r}")
    return number


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"expected an integer from 0 to {MAX_COUNT}, got {value!r}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a size like 512M, got {value!r}")
    size = parse_size(value)
    if size > MAX_MEMORY:
        raise ValueError(f"must be at most {format_size(MAX_MEMORY)}, got {value!r}")
    return size


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration like 90s, got {value!r}")
    return parse_duration(value)


def _role(value: object) -> NodeRole:
    role = _str(value)
    try:
        return NodeRole(role)
    except ValueError:
        raise ValueError(f"must be one of {', '.join(NodeRole)}, got {role!r}") from None


def _relay_serve(value: object) -> str:
    text = _str(value)
    if text not in RELAY_SERVE:
        raise ValueError(f"must be one of {', '.join(RELAY_SERVE)}, got {text!r}")
    return text


def _port_range(value: object) -> tuple[int, int]:
    """ "51820-51899", one port "51820", or "0" (any free port the kernel picks)."""
    text = _str(value)
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        raise ValueError(f"expected a port range like 51820-51899, or 0, got {text!r}") from None
    if (lo, hi) != (0, 0) and not 1 <= lo <= hi <= 65535:
        raise ValueError(f"ports must be 1 ≤ first ≤ last ≤ 65535 (or 0), got {text!r}")
    return lo, hi


def _log_level(value: object) -> str:
    level = _str(value)
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level.lower()


def _within(parser: Callable[[object], float], lo: float, hi: float, *, above: bool = False,
            show: Callable[[float], str] = lambda v: f"{v:g}") -> Callable[[object], float]:
    """``parser`` whose result must lie in [lo, hi] (in (lo, hi] with ``above``)."""

    def parse_within(value: object) -> float:
        result = parser(value)
        if result > hi or result < lo or (above and result == lo):
            low = f"more than {show(lo)}" if above else f"at least {show(lo)}"
            raise ValueError(f"must be {low} and at most {show(hi)}, got {value!r}")
        return result

    return parse_within


def _seconds(v: float) -> str:
    return f"{v:g}s"


def _bytes(v: float) -> str:
    return format_size(int(v))


_cpus = _within(_number, 0, MAX_CPUS)
_price = _within(_number, 0, MAX_PRICE)

_timeout = _within(_duration, 0, MAX_TIMEOUT, above=True, show=_seconds)  # must pass, so > 0
_grace = _within(_duration, 0, MAX_TIMEOUT, show=_seconds)  # 0 = none
_pids = _within(_count, 1, PID_MAX_LIMIT)
_tmpfs = _within(_size, MIN_TMPFS, MAX_MEMORY, show=_bytes)
_log_limit = _within(_size, MIN_LOG_LIMIT, MAX_LOG_LIMIT, show=_bytes)
_at_least_one = _within(_count, 1, MAX_COUNT)

Parser = Callable[[object], object]

# section -> (dataclass, {key: parser})
SCHEMA: dict[str, tuple[type, dict[str, Parser]]] = {
    "node": (NodeConfig, {"role": _role, "listen": _strs, "bootstrap": _strs,
                          "control_socket": _str, "log_level": _log_level}),
    "resources": (ResourcesConfig, {"cpus": _cpus, "memory": _size, "reserve_memory": _size,
                                    "gpus": _strs, "docker_url": _str, "gpu_capabilities": _gpu_capabilities}),
    "pricing": (PricingConfig, {"cpu_hour": _price, "gpu_hour": _price}),
    "policy": (PolicyConfig, {"images": _strs, "image_ids": _image_ids, "max_timeout": _timeout, "allow_network": _bool,
                              "max_cpus": _cpus, "max_memory": _size, "max_concurrent": _at_least_one,
                              "offers_per_peer": _at_least_one, "lapsed_offers": _at_least_one}),
    "limits": (LimitsConfig, {"pids": _pids, "tmpfs": _tmpfs, "log_limit": _log_limit,
                              "output_limit": _size, "stop_grace": _grace, "drain_grace": _grace}),
    "network": (NetworkConfig, {"advert_interval": _timeout, "advert_ttl": _timeout,
                                "connect_timeout": _timeout, "io_timeout": _timeout,
                                "keepalive": _timeout}),
    "requester": (RequesterConfig, {"max_attempts": _at_least_one, "placement_deadline": _timeout,
                                    "offer_hold": _timeout, "provider_timeout": _timeout,
                                    "peer_wait": _grace, "queue_timeout": _grace}),
    "relay": (RelayConfig, {"serve": _relay_serve, "reservations": _at_least_one,
                            "max_reservations": _at_least_one, "circuit_bytes": _size,
                            "circuit_duration": _timeout, "allow_data": _bool}),
    "metrics": (MetricsConfig, {"listen": _str}),
    "dashboard": (DashboardConfig, {"listen": _str}),
    "retention": (RetentionConfig, {"max_age": _duration, "max_size": _size, "interval": _duration}),
    "storage": (StorageConfig, {"blob_quota": _size, "output_retention": _duration}),
    "gang": (GangConfig, {"enabled": _bool, "endpoint_host": _str, "ports": _port_range}),
    "images": (ImagesConfig, {"receive": _bool}),
}


def parse(data: dict[str, object], *, home: Path, source: str) -> Config:
    """Build a Config from parsed TOML; errors name the key and ``source``."""
    sections: dict[str, object] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        cls, parsers = SCHEMA[section]
        values: dict[str, object] = {}
        for key, raw in body.items():
            parser = parsers.get(key)
            if parser is None:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
            try:
                values[key] = parser(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {section}.{key}: {exc}") from exc
        sections[section] = cls(**values)
    config = Config(home=home, **sections)  # type: ignore[arg-type]
    _check_consistency(config, source)
    return config


def _check_consistency(config: Config, source: str) -> None:
    net = config.network
    if net.advert_interval <= 0 or net.advert_ttl < 2 * net.advert_interval:
        raise ConfigError(
            f"{source}: network.advert_ttl ({net.advert_ttl:g}s) must be at least twice "
            f"network.advert_interval ({net.advert_interval:g}s)"
        )
    if config.requester.max_attempts < 1:
        raise ConfigError(f"{source}: requester.max_attempts must be at least 1")
    if config.gang.enabled and not config.gang.endpoint_host:
        raise ConfigError(f"{source}: gang.enabled needs gang.endpoint_host (the address other providers reach)")


def load(home: Path) -> Config:
    """Read ``<home>/config.toml``; a missing file means every default."""
    data = read_config_file(home)
    if data is None:
        return Config(home=home)
    return parse(data, home=home, source=str(home / CONFIG_NAME))


def with_overrides(config: Config, section: str, **values: object) -> Config:
    """A copy of ``config`` with some keys of one section replaced."""
    current = getattr(config, section)
    return dataclasses.replace(config, **{section: dataclasses.replace(current, **values)})


DEFAULT_CONFIG_TEXT = '''\
# peerd node configuration. Every key is shown with its default.
# Sizes: 512M, 24G. Durations: 90s, 10m, 2h. Numbers must be finite and within
# what the protocol carries (e.g. max_timeout at most 30d); a bad value is an
# error naming the key, and a reload with one keeps the old settings.

[node]
# provider: lends this host's CPUs/GPUs and can also submit jobs.
# requester: only submits jobs. seed: bootstrap node (DHT + gossip relay only).
role = "provider"
# libp2p listen addresses.
listen = ["/ip4/0.0.0.0/tcp/4001"]
# Seed multiaddrs (with /p2p/<peer id>) to join through. Empty = a private
# network you seed yourself; `peerd run --bootstrap ADDR` adds to this list.
bootstrap = []
# Control socket path; empty = $RUNTIME_DIRECTORY/control.sock under systemd,
# else <home>/control.sock.
control_socket = ""
log_level = "info"

[resources]
# CPUs offered (0 = all), memory offered (0 = all less reserve_memory).
cpus = 0
memory = 0
reserve_memory = "1G"
# GPUs shared: ["all"], ["none"], or a list of NVML UUIDs.
gpus = ["all"]
# Docker endpoint; empty = $DOCKER_HOST or the local socket.
docker_url = ""
# NVIDIA driver capabilities a GPU job gets: some of compute, compat32, graphics, utility, video, display.
gpu_capabilities = ["compute", "utility"]

[pricing]
# Credits per hour for one CPU / one GPU.
cpu_hour = 0.01
gpu_hour = 0.5

[policy]
# Images jobs may use (shell-style patterns), e.g. ["docker.io/library/*"].
images = ["*"]
# Digest pinning: image ids ("sha256:<64 hex>") jobs may use; empty = any. An
# image a requester carries is checked by its id before any byte of it moves.
image_ids = []
max_timeout = "24h"
# May a job ask for network access? Off by default: jobs get no network.
allow_network = false
# Per-job caps (0 = up to what is offered).
max_cpus = 0
max_memory = 0
max_concurrent = 8
# Per requester peer: offers open at once, and offers let lapse unaccepted (decaying) before "busy".
offers_per_peer = 16
lapsed_offers = 3

[limits]
# Per job: processes (at least 1), /tmp size (at least 1M; charged to the job's
# memory), output tail kept per stream (1K up to just under 2M: a result carries
# both tails in one frame), bytes of /out files kept (0 = none).
pids = 512
tmpfs = "64M"
log_limit = "1M"
output_limit = "64M"
# A stopped job gets stop_grace before SIGKILL; on SIGTERM running jobs get
# drain_grace. Stopping takes at most drain_grace + stop_grace + io_timeout + 33s
# (systemd's TimeoutStopSec must cover it, plus 10s to exit).
stop_grace = "5s"
drain_grace = "60s"

[network]
advert_interval = "60s"
advert_ttl = "300s"
connect_timeout = "10s"
io_timeout = "30s"
keepalive = "5s"

[requester]
max_attempts = 3
placement_deadline = "60s"
offer_hold = "15s"
provider_timeout = "20s"
# With no provider known yet (a node just started), wait this long for adverts.
peer_wait = "10s"
# A task no provider has room for now waits ("queued", holding nothing) and is placed as soon
# as one has, for up to this long; then it ends not_placed. Per job: submit --queue-timeout.
queue_timeout = "1h"

[relay]
# Circuit Relay v2, for providers behind home routers. "auto": seeds relay for
# others, other nodes do not; "on" lets any publicly reachable node relay.
serve = "auto"
# A node that peers cannot dial keeps reservations on this many relays and
# advertises its addresses through them.
reservations = 2
# Limits of a relay: reservations it holds, and what one relayed connection
# may carry (both directions together) and for how long. Large job data never
# goes through a relay (a relayed provider is ranked after a direct one).
max_reservations = 32
circuit_bytes = "1G"
circuit_duration = "1h"
# Job data (inputs, outputs, images) goes only over a direct connection (after
# trying hole punching); true lets it go through a relay, within the limits above.
allow_data = false

[metrics]
# Prometheus endpoint on loopback, e.g. "127.0.0.1:9464"; empty = off.
listen = ""

[dashboard]
# Read-only web dashboard on loopback, e.g. "127.0.0.1:9470" (then open
# http://127.0.0.1:9470/); empty = off. Like [metrics], loopback addresses only.
listen = ""

[retention]
# Finished tasks' stdout/stderr (in state.db) and task directories (under
# <home>/tasks) are pruned, oldest first, once older than max_age or while
# they total more than max_size. 0 = no limit of that kind. Receipts, leases
# and each result's state, exit code and digests are kept forever.
max_age = "7d"
max_size = "1G"
# How often the pruner runs (at least every second).
interval = "10m"

[storage]
# Job data chunks (<home>/blobs) kept at most; unreferenced chunks are
# removed, oldest first, to make room. 0 = no limit.
blob_quota = "10G"
# How long a finished task's job data (its outputs) stays pinned: the
# provider serves the outputs to the requester (peerd get) until then.
output_retention = "24h"

[gang]
# Join gang jobs (peerd submit --nodes N): this provider runs one rank of a job
# spread over N providers, joined by a WireGuard overlay. Off by default: each
# rank listens on a UDP port (its endpoint) that the other members' hosts must
# reach, so set endpoint_host to this host's address as they see it, and open
# the ports (a range "first-last", or "0" for any free port).
enabled = false
endpoint_host = ""
ports = "51820-51899"
[images]
# Accept images that requesters carry as job data (their own, never pushed to a
# registry). They are loaded into this node's dockerd under peerd-received:<id>,
# their chunks count against blob_quota, and the least recently used are removed
# (never one a job uses) when room is needed.
receive = true
'''
