"""The provider's policy: which jobs this host accepts at all. Pure.

``ProviderPolicy.check(spec, gpu_runtime=...)`` raises ``PolicyError`` with the
first violated rule's reason code (checked in the order of ``_RULES``);
``violations`` lists them all (for ``peerd doctor``-style explanations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from peerd.executor.contract import RunSpec
from peerd.executor.errors import PolicyError, Reason


@dataclass(frozen=True)
class ProviderPolicy:
    allowed_images: tuple[str, ...] = ("*",)  # fnmatch globs over the image reference
    image_ids: tuple[str, ...] = ()  # digest pinning: the image ids jobs may use; () = any
    max_time_limit: float = 24 * 3600.0  # seconds
    allow_network: bool = False  # may a job that asks for network get the default bridge?
    max_cpus: float | None = None  # per job; None = no policy limit (capacity still applies)
    max_memory: int | None = None  # bytes per job

    def check(self, spec: RunSpec, *, gpu_runtime: bool) -> None:
        found = self.violations(spec, gpu_runtime=gpu_runtime)
        if found:
            raise found[0]

    def violations(self, spec: RunSpec, *, gpu_runtime: bool) -> list[PolicyError]:
        found = []
        for reason, rule in _RULES:
            detail = rule(self, spec, gpu_runtime)
            if detail is not None:
                found.append(PolicyError(reason, detail))
        return found


Rule = Callable[[ProviderPolicy, RunSpec, bool], "str | None"]


def _image(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if any(fnmatchcase(spec.image, pattern) for pattern in policy.allowed_images):
        return None
    return f"image {spec.image!r} matches none of {list(policy.allowed_images)}"


def _pinned(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if not policy.image_ids:
        return None
    if not spec.image_id:
        return f"image {spec.image!r} has no id known before it runs; this provider pins image ids"
    if spec.image_id in policy.image_ids:
        return None
    return f"image id {spec.image_id} is not one of the {len(policy.image_ids)} pinned here"


def _time(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if spec.timeout <= policy.max_time_limit:
        return None
    return f"time limit {spec.timeout:g}s exceeds this provider's {policy.max_time_limit:g}s"


def _network(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if not spec.network or policy.allow_network:
        return None
    return "the job asks for network access and this provider grants none"


def _cpus(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if policy.max_cpus is None or spec.cpus <= policy.max_cpus:
        return None
    return f"{spec.cpus:g} cpus asked, at most {policy.max_cpus:g} per job"


def _memory(policy: ProviderPolicy, spec: RunSpec, _gpu: bool) -> str | None:
    if policy.max_memory is None or spec.memory <= policy.max_memory:
        return None
    return f"{spec.memory} bytes of memory asked, at most {policy.max_memory} per job"


def _gpu_runtime(_policy: ProviderPolicy, spec: RunSpec, gpu_runtime: bool) -> str | None:
    if not spec.gpus or gpu_runtime:
        return None
    return (
        f"the job asks for {len(spec.gpus)} GPU(s) but dockerd here has no NVIDIA runtime "
        "(install nvidia-container-toolkit and configure docker)"
    )


_RULES: tuple[tuple[Reason, Rule], ...] = (
    (Reason.NO_GPU_RUNTIME, _gpu_runtime),
    (Reason.IMAGE_NOT_ALLOWED, _image),
    (Reason.IMAGE_NOT_ALLOWED, _pinned),
    (Reason.TIME_LIMIT_TOO_LONG, _time),
    (Reason.NETWORK_NOT_ALLOWED, _network),
    (Reason.CPUS_OVER_LIMIT, _cpus),
    (Reason.MEMORY_OVER_LIMIT, _memory),
)
