"""From a ``Config`` to the settings of each component the node builds.

The one place where a config key becomes a component's setting, so that a
test (tests/daemon/test_wiring.py) can check that every key in
``config.SCHEMA`` reaches the code that uses it. Pure: builds objects, starts
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from peerd.config import Config
from peerd.data.imagereceive import ImageSettings
from peerd.data.jobdata import DataSettings
from peerd.executor.contract import OutputStore
from peerd.executor.docker import DockerExecutor
from peerd.executor.plan import Limits
from peerd.executor.policy import ProviderPolicy
from peerd.jobs.provider import GangSettings, ProviderSettings
from peerd.jobs.requester import RequesterSettings
from peerd.p2p.adverts import AdvertSource, Clock
from peerd.p2p.service import P2PService
from peerd.state.retention import Pruner
from peerd.state.store import Store
from protocol.signing import Signer


def policy_from(config: Config) -> ProviderPolicy:
    p = config.policy
    return ProviderPolicy(
        allowed_images=p.images,
        image_ids=p.image_ids,
        max_time_limit=p.max_timeout,
        allow_network=p.allow_network,
        max_cpus=p.max_cpus or None,
        max_memory=p.max_memory or None,
    )


def executor_from(config: Config, node_id: str, *, store: OutputStore | None = None) -> DockerExecutor:
    limits = config.limits
    return DockerExecutor(
        node_id, config.work_dir, base_url=config.resources.docker_url or None, policy=policy_from(config),
        log_limit=limits.log_limit, output_limit=limits.output_limit, stop_grace=limits.stop_grace,
        limits=Limits(tmp_size=limits.tmpfs, gpu_capabilities=config.resources.gpu_capabilities), store=store,
    )


def provider_settings_from(config: Config) -> ProviderSettings:
    return ProviderSettings(
        price_cpu_hour=config.pricing.cpu_hour, price_gpu_hour=config.pricing.gpu_hour,
        policy=policy_from(config), pids=config.limits.pids,
        offer_hold=config.requester.offer_hold, io_timeout=config.network.io_timeout,
        keepalive=config.network.keepalive, max_concurrent=config.policy.max_concurrent,
        offers_per_peer=config.policy.offers_per_peer, lapse_limit=config.policy.lapsed_offers,
        gang=gang_settings_from(config),
    )


def gang_settings_from(config: Config) -> GangSettings | None:
    gang = config.gang
    if not gang.enabled:
        return None
    return GangSettings(endpoint_host=gang.endpoint_host, first_port=gang.ports[0], last_port=gang.ports[1])


def requester_settings_from(config: Config) -> RequesterSettings:
    return RequesterSettings(
        max_attempts=config.requester.max_attempts,
        placement_deadline=config.requester.placement_deadline,
        provider_timeout=config.requester.provider_timeout,
        io_timeout=config.network.io_timeout,
        peer_wait=config.requester.peer_wait,
        queue_timeout=config.requester.queue_timeout,
    )


def p2p_from(
    config: Config, signer: Signer, *, seed: bool, advert_source: AdvertSource | None, clock: Clock = time.time
) -> P2PService:
    return P2PService(
        signer, listen=list(config.node.listen), bootstrap=list(config.node.bootstrap), seed=seed,
        net=config.network, advert_source=advert_source, clock=clock, relay=config.relay,
    )


def pruner_from(config: Config, store: Store, *, active: Callable[[], Collection[str]]) -> Pruner:
    return Pruner(store, config.retention, work_dir=config.work_dir, active=active)


@dataclass(frozen=True)
class ChunkStorePlace:
    """Where the node's chunk store lives and how much it may hold (``ChunkStore.open(root, quota)``)."""

    root: Path
    quota: int


def chunk_store_from(config: Config) -> ChunkStorePlace:
    return ChunkStorePlace(root=config.home / "blobs", quota=config.storage.blob_quota)


def data_settings_from(config: Config) -> DataSettings:
    return DataSettings(staging_dir=config.home / "staging", output_retention=config.storage.output_retention,
                        io_timeout=config.network.io_timeout)


def image_settings_from(config: Config) -> ImageSettings:
    return ImageSettings(receive=config.images.receive, marks_dir=config.home / "images",
                         io_timeout=config.network.io_timeout)
