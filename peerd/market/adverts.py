"""Builds this node's resource advert from its inventory, ledger and config. Pure.

Offered resources are the host's, capped by the config (``resources.cpus``,
``resources.memory`` less ``reserve_memory``, ``resources.gpus``); free
capacity comes from the capacity ledger and counts confirmed (leased)
reservations only: an offer is a quote that holds nothing, and the short hold
between Accept and the countersigned lease is not advertised as used either.
The p2p layer signs and publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerd import __version__
from peerd.config import Config
from peerd.executor.gpus import CapacityLedger
from peerd.host.nvml import GpuInfo
from protocol.gpumatch import is_version
from protocol.messages import Advert, GpuOffer


@dataclass(frozen=True)
class HostFacts:
    """What the host has, as the inventory found it at start-up."""

    cpus: float
    memory: int
    disk_free: int
    docker: bool
    gpu_runtime: bool
    gpus: tuple[GpuInfo, ...]


def offered_gpus(config: Config, gpus: tuple[GpuInfo, ...]) -> tuple[GpuInfo, ...]:
    chosen = config.resources.gpus
    if "none" in chosen:
        return ()
    if "all" in chosen:
        return gpus
    return tuple(g for g in gpus if g.uuid in chosen or g.parent in chosen)  # a MIG GPU named: its MIG devices


def offered_capacity(config: Config, host: HostFacts) -> tuple[float, int]:
    cpus = config.resources.cpus or host.cpus
    memory = config.resources.memory or max(host.memory - config.resources.reserve_memory, 0)
    return min(cpus, host.cpus), min(memory, host.memory)


def build_advert(
    *,
    config: Config,
    host: HostFacts,
    ledger: CapacityLedger,
    peer_id: str,
    addrs: list[str],
    now: float,
    seq: int,
    queue_depth: int,
    running: int,
    draining: bool,
) -> Advert:
    free = ledger.free(holds=False)
    free_gpu_ids = {g.uuid for g in free.gpus}
    gpus = tuple(
        GpuOffer(uuid=g.uuid, model=g.name, memory=g.memory_total, compute_capability=g.compute_capability)
        for g in ledger.gpus
    )
    return Advert(
        peer_id=peer_id,
        seq=seq,
        issued_at=now,
        expires_at=now + config.network.advert_ttl,
        role=config.node.role,
        addrs=tuple(addrs[:16]),
        version=__version__,
        cpus=ledger.total_cpus,
        memory=ledger.total_memory,
        disk=host.disk_free,
        gpus=gpus,
        free_cpus=min(max(free.cpus, 0.0), ledger.total_cpus),
        free_memory=min(max(free.memory, 0), ledger.total_memory),
        free_gpus=tuple(g.uuid for g in ledger.gpus if g.uuid in free_gpu_ids),
        queue_depth=queue_depth,
        running=running,
        price_cpu_hour=config.pricing.cpu_hour,
        price_gpu_hour=config.pricing.gpu_hour,
        docker=host.docker,
        gpu_runtime=host.gpu_runtime,
        network=config.policy.allow_network,
        max_timeout=config.policy.max_timeout,
        gang=config.gang.enabled,
        draining=draining,
        images=config.images.receive and host.docker,
        gpu_driver=_version(ledger.gpus[0].driver_version) if ledger.gpus else "",
        cuda_version=_version(ledger.gpus[0].cuda_version) if ledger.gpus else "",  # one driver serves them all
    )


def _version(text: str) -> str:
    """``text`` if it reads as a version (what the advert accepts), else "" (unknown)."""
    return text if is_version(text) else ""
