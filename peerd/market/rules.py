"""The market rules, pure: does a job spec fit an advert, what it costs, who is best.

Nothing here does I/O or reads a clock. ``misfit`` says why a provider cannot
take a spec (or None when it can), ``price_for`` is the hourly price a provider
would charge for a spec, and ``rank`` orders the providers that fit: cheapest
first, then the tightest fit (least capacity left idle), then the least loaded,
then by peer ID so the order is deterministic. With reputation (a ``Trust``
per provider, from ``peerd.market.reputation``) a tier comes first (distrusted
providers last; newcomers first in an exploratory placement) and the price is
multiplied by the provider's reputation factor.

A GPU matches a spec when it is free and ``protocol.gpumatch`` says its model and
memory are what the spec asks (the provider's ledger applies the same rule).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import replace

from peerd.market.reputation import NO_REPUTATION, Trust
from protocol.gpumatch import gpu_matches, version_at_least
from protocol.messages import Advert, GpuOffer, JobSpec, NodeRole
from protocol.reachability import Reachability, of_addrs


class Misfit(enum.StrEnum):
    """Why an advertised provider cannot run a spec."""

    NOT_A_PROVIDER = "not_a_provider"
    DRAINING = "draining"
    NO_DOCKER = "no_docker"
    CPUS = "cpus"
    MEMORY = "memory"
    GPUS = "gpus"
    GPU_RUNTIME = "gpu_runtime"
    CUDA = "cuda"  # the provider's driver supports an older CUDA than the job asks for
    TIMEOUT = "timeout"
    NETWORK = "network"
    GANG = "gang"
    IMAGES = "images"  # the job carries its image; this provider takes none
    PRICE = "price"


def price_for(spec: JobSpec, advert: Advert) -> float:
    """Credits per hour: CPUs times the CPU price plus GPUs times the GPU price."""
    return spec.cpus * advert.price_cpu_hour + spec.gpus * advert.price_gpu_hour


def matching_free_gpus(spec: JobSpec, advert: Advert) -> list[GpuOffer]:
    """The advertised free GPUs that satisfy the spec's model and memory."""
    free = set(advert.free_gpus)
    return [g for g in advert.gpus if g.uuid in free
            and gpu_matches(spec.gpu_model, spec.gpu_memory, name=g.model, memory=g.memory,
                            min_capability=spec.min_compute_capability, capability=g.compute_capability)]


# Checks in the order they are reported: the first that fails is the reason.
_CHECKS: tuple[tuple[Misfit, Callable[[JobSpec, Advert], bool]], ...] = (
    (Misfit.NOT_A_PROVIDER, lambda s, a: a.role == NodeRole.PROVIDER),
    (Misfit.DRAINING, lambda s, a: not a.draining),
    (Misfit.NO_DOCKER, lambda s, a: a.docker),
    (Misfit.CPUS, lambda s, a: s.cpus <= a.free_cpus),
    (Misfit.MEMORY, lambda s, a: s.memory <= a.free_memory),
    (Misfit.GPU_RUNTIME, lambda s, a: s.gpus == 0 or a.gpu_runtime),
    (Misfit.CUDA, lambda s, a: s.gpus == 0 or version_at_least(a.cuda_version, s.min_cuda)),
    (Misfit.GPUS, lambda s, a: s.gpus == 0 or len(matching_free_gpus(s, a)) >= s.gpus),
    (Misfit.TIMEOUT, lambda s, a: s.timeout <= a.max_timeout),
    (Misfit.NETWORK, lambda s, a: not s.network or a.network),
    (Misfit.GANG, lambda s, a: s.nodes == 1 or a.gang),
    (Misfit.IMAGES, lambda s, a: s.image_content is None or a.images),
    (Misfit.PRICE, lambda s, a: price_for(s, a) <= s.max_price),
)


def misfit(spec: JobSpec, advert: Advert) -> Misfit | None:
    """The first reason ``advert`` cannot run ``spec``, or None if it fits."""
    for reason, ok in _CHECKS:
        if not ok(spec, advert):
            return reason
    return None


def fits(spec: JobSpec, advert: Advert) -> bool:
    return misfit(spec, advert) is None


def ever_fits(spec: JobSpec, advert: Advert) -> bool:
    """Could ``advert``'s provider run ``spec`` once its jobs end and it stops draining? (The same
    rules as ``fits``, as if everything it has were free: a job that no provider ever fits is not
    worth queueing.)"""
    idle = replace(advert, free_cpus=advert.cpus, free_memory=advert.memory,
                   free_gpus=tuple(g.uuid for g in advert.gpus), draining=False)
    return fits(spec, idle)


def waste(spec: JobSpec, advert: Advert) -> float:
    """How much of the provider's free capacity the job would leave idle (0..3).

    The sum of the idle fractions of CPUs, memory and matching GPUs; lower is
    a tighter fit. Only meaningful for an advert that fits.
    """
    cpu = 1.0 - spec.cpus / advert.free_cpus if advert.free_cpus > 0 else 0.0
    mem = 1.0 - spec.memory / advert.free_memory if advert.free_memory > 0 else 0.0
    gpu = 0.0
    if spec.gpus:
        matching = len(matching_free_gpus(spec, advert))
        gpu = 1.0 - spec.gpus / matching if matching else 0.0
    return max(cpu, 0.0) + max(mem, 0.0) + max(gpu, 0.0)


def rank_key(
    spec: JobSpec, advert: Advert, trust: Trust = NO_REPUTATION
) -> tuple[int, float, float, bool, int, str]:
    """By reputation tier, then cheapest (the price times the reputation factor: see
    ``peerd.market.reputation``), tightest fit, direct before relayed (reachable only through a
    relay), least loaded."""
    return (
        trust.tier,
        price_for(spec, advert) * trust.price_factor,
        round(waste(spec, advert), 6),
        of_addrs(advert.addrs) is Reachability.RELAYED,
        advert.queue_depth + advert.running,
        advert.peer_id,
    )


def rank(
    spec: JobSpec, adverts: Iterable[Advert], trust: Callable[[str], Trust] = lambda _peer: NO_REPUTATION
) -> list[Advert]:
    """The adverts that fit ``spec``, best first; ``trust`` gives a provider's reputation terms."""
    fitting = [a for a in adverts if fits(spec, a)]
    return sorted(fitting, key=lambda a: rank_key(spec, a, trust(a.peer_id)))


def explain(spec: JobSpec, adverts: Iterable[Advert]) -> dict[str, int]:
    """How many adverts failed each check (for a "not placed" message)."""
    counts: dict[str, int] = {}
    for advert in adverts:
        reason = misfit(spec, advert)
        if reason is not None:
            counts[reason.value] = counts.get(reason.value, 0) + 1
    return counts
