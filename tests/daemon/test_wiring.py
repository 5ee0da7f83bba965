"""Every config key reaches the code that uses it.

The node is built from a config in which every key differs from its default;
a table maps each key of ``config.SCHEMA`` to where the built components carry
it. A key without an entry, or one whose value does not arrive, fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from peerd.config import SCHEMA, Config, load, with_overrides
from peerd.daemon.drainplan import DrainBudget, drain_budget
from peerd.daemon.node import Node
from peerd.daemon.wiring import (
    chunk_store_from,
    data_settings_from,
    executor_from,
    gang_settings_from,
    image_settings_from,
    p2p_from,
    provider_settings_from,
    pruner_from,
    requester_settings_from,
)
from peerd.executor.contract import RunSpec
from peerd.executor.docker import DockerExecutor
from peerd.executor.plan import plan_container
from peerd.host.identity import init_home
from peerd.host.nvml import GpuInfo
from peerd.jobs.provider import ProviderSettings
from peerd.jobs.requester import RequesterSettings
from peerd.market.adverts import HostFacts, offered_capacity, offered_gpus
from peerd.p2p.service import P2PService
from peerd.state.retention import Pruner

SEED = "/ip4/127.0.0.1/tcp/4999/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"

EVERY_KEY_CHANGED = f'''
[node]
role = "requester"
listen = ["/ip4/127.0.0.1/tcp/4555"]
bootstrap = ["{SEED}"]
control_socket = "/run/elsewhere.sock"
log_level = "debug"
[resources]
cpus = 3
memory = "6G"
reserve_memory = "2G"
gpus = ["none"]
docker_url = "unix:///run/other-docker.sock"
gpu_capabilities = ["compute", "utility", "video"]
[pricing]
cpu_hour = 0.25
gpu_hour = 2.5
[policy]
images = ["docker.io/library/*"]
image_ids = ["sha256:abababababababababababababababababababababababababababababababab"]
max_timeout = "2h"
allow_network = true
max_cpus = 2
max_memory = "3G"
max_concurrent = 3
offers_per_peer = 5
lapsed_offers = 7
[limits]
pids = 99
tmpfs = "8M"
log_limit = "2K"
output_limit = "7M"
stop_grace = "9s"
drain_grace = "45s"
[network]
advert_interval = "20s"
advert_ttl = "100s"
connect_timeout = "4s"
io_timeout = "12s"
keepalive = "3s"
[relay]
serve = "on"
reservations = 3
max_reservations = 16
circuit_bytes = "2G"
circuit_duration = "2h"
allow_data = true
[gang]
enabled = true
endpoint_host = "192.0.2.7"
ports = "40000-40009"
[requester]
max_attempts = 5
placement_deadline = "90s"
offer_hold = "7s"
provider_timeout = "11s"
peer_wait = "3s"
queue_timeout = "17m"
[metrics]
listen = "127.0.0.1:9999"
[dashboard]
listen = "127.0.0.1:9998"
[retention]
max_age = "2d"
max_size = "5M"
interval = "30s"
[storage]
blob_quota = "3G"
output_retention = "2h"
[images]
receive = false
'''

GPU = GpuInfo(index=0, uuid="GPU-1", name="T4", memory_total=16 << 30, memory_free=16 << 30,
              utilization=0, driver_version="550", compute_capability="7.5")
HOST = HostFacts(cpus=64.0, memory=256 << 30, disk_free=1 << 40, docker=True, gpu_runtime=True, gpus=(GPU,))
SPEC = RunSpec(task_id="t1", image="busybox", cpus=1.0, memory=64 << 20, timeout=10.0)


@dataclass
class Built:
    config: Config
    node: Node
    executor: DockerExecutor
    provider: ProviderSettings
    requester: RequesterSettings
    p2p: P2PService
    drain: DrainBudget
    pruner: Pruner

    def tmp_mount(self) -> object:
        plan = plan_container(SPEC, node_id="n1", out_dir=Path("/x"), deadline=1.0, limits=self.executor.limits)
        return plan.host_config["Tmpfs"]

    def gpu_env(self) -> object:
        plan = plan_container(replace(SPEC, gpus=("GPU-1",)), node_id="n1", out_dir=Path("/x"), deadline=1.0,
                              limits=self.executor.limits)
        return plan.environment["NVIDIA_DRIVER_CAPABILITIES"]

    def seeds(self) -> list[str]:
        return [a for seed in self.p2p._seeds for a in seed.addrs]  # what discovery dials


def build(home: Path) -> Built:
    config = load(home)
    node = Node(config)
    return Built(
        config=config, node=node, executor=executor_from(config, node.signer.peer_id),
        provider=provider_settings_from(config), requester=requester_settings_from(config),
        p2p=p2p_from(config, node.signer, seed=False, advert_source=None), drain=drain_budget(config),
        pruner=pruner_from(config, None, active=frozenset),  # type: ignore[arg-type]  # the store is not touched
    )


# section.key -> where the built node carries it
REACHES: dict[str, Callable[[Built], object]] = {
    "node.role": lambda b: b.node.role,
    "node.listen": lambda b: b.p2p._listen,
    "node.bootstrap": Built.seeds,
    "node.control_socket": lambda b: b.config.control_path,  # ControlServer(config.control_path)
    "node.log_level": lambda b: b.config.node.log_level,  # run_daemon's setup_logging
    "resources.cpus": lambda b: offered_capacity(b.config, HOST)[0],
    "resources.memory": lambda b: offered_capacity(b.config, HOST)[1],
    "resources.reserve_memory": lambda b: offered_capacity(with_overrides(b.config, "resources", memory=0), HOST)[1],
    "resources.gpus": lambda b: offered_gpus(b.config, HOST.gpus),
    "resources.docker_url": lambda b: b.executor.base_url,
    "resources.gpu_capabilities": lambda b: b.gpu_env(),
    "pricing.cpu_hour": lambda b: b.provider.price_cpu_hour,
    "pricing.gpu_hour": lambda b: b.provider.price_gpu_hour,
    "policy.images": lambda b: (b.executor.policy.allowed_images, b.provider.policy.allowed_images),
    "policy.image_ids": lambda b: (b.executor.policy.image_ids, b.provider.policy.image_ids),
    "images.receive": lambda b: image_settings_from(b.config).receive,  # ProviderImages in Node._start_provider
    "policy.max_timeout": lambda b: (b.executor.policy.max_time_limit, b.provider.policy.max_time_limit),
    "policy.allow_network": lambda b: (b.executor.policy.allow_network, b.provider.policy.allow_network),
    "policy.max_cpus": lambda b: (b.executor.policy.max_cpus, b.provider.policy.max_cpus),
    "policy.max_memory": lambda b: (b.executor.policy.max_memory, b.provider.policy.max_memory),
    "policy.max_concurrent": lambda b: b.provider.max_concurrent,
    "limits.pids": lambda b: b.provider.pids,
    "limits.tmpfs": Built.tmp_mount,
    "limits.log_limit": lambda b: b.executor.log_limit,
    "limits.output_limit": lambda b: b.executor.output_limit,
    "limits.stop_grace": lambda b: (b.executor.stop_grace, b.drain.interrupt),
    "limits.drain_grace": lambda b: b.drain.grace,
    "network.advert_interval": lambda b: b.p2p.net.advert_interval,
    "network.advert_ttl": lambda b: b.p2p.net.advert_ttl,
    "network.connect_timeout": lambda b: b.p2p.net.connect_timeout,
    "network.io_timeout": lambda b: (b.p2p.net.io_timeout, b.provider.io_timeout, b.requester.io_timeout,
                                     b.drain.deliver),
    "network.keepalive": lambda b: (b.p2p.net.keepalive, b.provider.keepalive),
    "relay.serve": lambda b: b.p2p.serves_relay,
    "relay.reservations": lambda b: b.p2p.relay.reservations,  # Reservations(want=...) in P2PService._serve
    "relay.max_reservations": lambda b: b.p2p.relay.max_reservations,  # relay.build_relay's RelayLimits
    "relay.circuit_bytes": lambda b: b.p2p.relay.circuit_bytes,
    "relay.circuit_duration": lambda b: b.p2p.relay.circuit_duration,
    "relay.allow_data": lambda b: b.p2p.relay.allow_data,  # read by transfer.blob_opener
    "requester.max_attempts": lambda b: b.requester.max_attempts,
    "requester.placement_deadline": lambda b: b.requester.placement_deadline,
    "requester.offer_hold": lambda b: b.provider.offer_hold,
    "requester.provider_timeout": lambda b: b.requester.provider_timeout,
    "requester.peer_wait": lambda b: b.requester.peer_wait,
    "requester.queue_timeout": lambda b: b.requester.queue_timeout,
    "policy.offers_per_peer": lambda b: b.provider.offers_per_peer,
    "policy.lapsed_offers": lambda b: b.provider.lapse_limit,
    "retention.max_age": lambda b: b.pruner.settings.max_age,
    "storage.blob_quota": lambda b: chunk_store_from(b.config).quota,
    "storage.output_retention": lambda b: data_settings_from(b.config).output_retention,
    "retention.max_size": lambda b: b.pruner.settings.max_size,
    "retention.interval": lambda b: b.pruner.settings.interval,
    "metrics.listen": lambda b: b.node.metrics_address,
    "dashboard.listen": lambda b: b.node.dashboard_address,
    "gang.enabled": lambda b: b.provider.gang is not None,
    "gang.endpoint_host": lambda b: b.provider.gang.endpoint_host if b.provider.gang else "",
    "gang.ports": lambda b: _gang_ports(b.config),
}


def _gang_ports(config: Config) -> tuple[int, int]:
    """The port range the provider would use, whether or not gangs are enabled in ``config``."""
    settings = gang_settings_from(with_overrides(config, "gang", enabled=True, endpoint_host="h"))
    assert settings is not None
    return settings.first_port, settings.last_port


def test_the_table_names_every_config_key() -> None:
    keys = {f"{section}.{key}" for section, (_cls, parsers) in SCHEMA.items() for key in parsers}
    assert set(REACHES) == keys


@pytest.fixture(scope="module")
def built_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, Built]:
    default_home, changed_home = tmp_path_factory.mktemp("default"), tmp_path_factory.mktemp("changed")
    for home in (default_home, changed_home):
        init_home(home)
    (changed_home / "config.toml").write_text(EVERY_KEY_CHANGED)
    return build(default_home), build(changed_home)


@pytest.mark.parametrize("key", sorted(REACHES))
def test_every_config_key_reaches_its_component(key: str, built_pair: tuple[Built, Built]) -> None:
    default, changed = built_pair
    assert REACHES[key](changed) != REACHES[key](default), f"{key} does not reach the code using it"


def test_values_arrive_as_configured(built_pair: tuple[Built, Built]) -> None:
    _, changed = built_pair
    assert changed.tmp_mount() == {"/tmp": f"rw,nosuid,nodev,size={8 << 20},mode=1777"}
    assert changed.executor.stop_grace == 9 and changed.executor.log_limit == 2048
    assert changed.executor.output_limit == 7 << 20 and changed.provider.pids == 99
    assert changed.drain.grace == 45 and changed.drain.deliver == 12 + 10


def test_components_default_to_the_configs_defaults(tmp_path: Path) -> None:
    # One default per setting: an executor built without arguments uses the config's.
    limits = Config().limits
    bare = DockerExecutor("n1", tmp_path)
    assert (bare.log_limit, bare.output_limit, bare.stop_grace) == (
        limits.log_limit, limits.output_limit, limits.stop_grace)
    assert bare.limits.tmp_size == limits.tmpfs
