"""``JobSpec``: what a requester wants run.

Its own module so that the CLI can build and check one without creating every
other message class (``protocol.messages`` re-exports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .gpumatch import is_version
from .limits import MAX_CPUS, MAX_GPUS, MAX_MEMORY, MAX_NODES, MAX_PRICE, MAX_TIMEOUT
from .schema import Struct, check_len, check_range, check_text, fail as _fail

MAX_INPUTS = 16  # input data sets per job
MAX_INPUT_SIZE = 1 << 40  # declared bytes of one input (the manifest format's own total limit)
MAX_DEST = 1024  # characters of an input's container path
_DIGEST_HEX = frozenset("0123456789abcdef")
# The provider's executor owns these: the NVIDIA container toolkit reads every NVIDIA_* variable (which GPUs,
# which driver capabilities, which CUDA the image needs) and, where its config names a swarm resource, the
# DOCKER_RESOURCE_* variable before NVIDIA_VISIBLE_DEVICES: a job setting one could reach past its GPUs.
RESERVED_ENV_PREFIXES = ("NVIDIA_", "DOCKER_RESOURCE_")


def reserved_env(name: str) -> bool:
    """``name`` (in any case) is an environment variable no job may set."""
    return name.upper().startswith(RESERVED_ENV_PREFIXES)


def is_digest_text(value: str) -> bool:
    """``"sha256:"`` + 64 lowercase hex digits (a manifest id as text)."""
    return len(value) == 71 and value.startswith("sha256:") and set(value[7:]) <= _DIGEST_HEX


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class InputRef(Struct):
    """One input data set of a job: a manifest (by id), where it is mounted, and its size.

    ``manifest`` is the manifest id as text (``"sha256:" + hex``); the lease
    carries the spec, so signing the lease binds the exact data. ``dest`` is an
    absolute, normalised container path; ``size`` is the total bytes of the
    manifest's files, declared so that a provider can refuse data it has no
    room for before anything moves. With ``file`` the manifest holds exactly one
    file, mounted at ``dest`` itself; otherwise the manifest's tree is mounted
    as the directory ``dest``.
    """

    manifest: str
    dest: str
    size: int
    file: bool = False

    def _check(self) -> None:
        if not is_digest_text(self.manifest):
            _fail(type(self), "manifest", f"must be 'sha256:' and 64 lowercase hex digits, got {self.manifest!r:.80}")
        check_text(self, "dest", MAX_DEST, nonempty=True)
        dest = self.dest
        parts = dest.split("/")
        if parts[0] or any(p in ("", ".", "..") for p in parts[1:]):
            _fail(type(self), "dest", f"must be an absolute, normalised path other than '/', got {dest!r:.80}")
        if any(c < " " or c == "\x7f" for c in dest):
            _fail(type(self), "dest", "holds a control character")
        check_range(self, "size", 0, MAX_INPUT_SIZE)


@dataclass(frozen=True, slots=True)
class ImageContent(Struct):
    """A job's image carried as job data, when the provider cannot pull it (``protocol.imagelayout``).

    ``id`` is the image id (``"sha256:"`` + the hex digest of its config), the
    one a provider's dockerd reports once it loaded the image: the lease binds
    it, so the provider runs exactly this image or nothing. ``manifest`` is the
    id of the manifest that lists the config and layers; ``size`` their total
    bytes, declared so that a provider can refuse an image it has no room for
    before anything moves.
    """

    id: str
    manifest: str
    size: int

    def _check(self) -> None:
        for name in ("id", "manifest"):
            value = getattr(self, name)
            if not is_digest_text(value):
                _fail(type(self), name, f"must be 'sha256:' and 64 lowercase hex digits, got {value!r:.80}")
        check_range(self, "size", 0, MAX_INPUT_SIZE)


@dataclass(frozen=True, slots=True)
class JobSpec(Struct):
    """What a requester wants run: on one provider, or (``nodes`` ≥ 2) as a gang on that many.

    ``nodes`` is left off the wire when it is 1, so a one-node job's bytes are
    those of a spec without the field. The resources are per node.
    """

    OMIT_DEFAULTS: ClassVar[frozenset[str]] = frozenset(
        {"nodes", "image_content", "min_cuda", "min_compute_capability"})
    image: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory: int = 256 << 20
    gpus: int = 0
    gpu_memory: int = 0
    gpu_model: str = ""
    timeout: float = 600.0
    network: bool = False
    max_price: float = MAX_PRICE
    inputs: tuple[InputRef, ...] = ()
    nodes: int = 1
    image_content: ImageContent | None = None  # the image travels with the job (None: the provider has or pulls it)
    min_cuda: str = ""  # GPU jobs: the CUDA version the provider's driver must support at least ("12.4")
    min_compute_capability: str = ""  # GPU jobs: each GPU's compute capability at least ("8.0")

    def _check(self) -> None:
        check_text(self, "image", 256, nonempty=True)
        check_len(self, "command", 256)
        check_len(self, "env", 128)
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                _fail(type(self), "env", f"has an invalid name {key!r}")
            if reserved_env(key):
                _fail(type(self), "env", f"sets {key!r:.80}: NVIDIA_* and DOCKER_RESOURCE_* variables are "
                      "reserved for the provider (they decide which GPUs and driver features a job gets)")
        if not 0 < self.cpus <= MAX_CPUS or not math.isfinite(self.cpus):
            _fail(type(self), "cpus", f"must be in (0, {MAX_CPUS}], got {self.cpus!r}")
        check_range(self, "memory", 4 << 20, MAX_MEMORY)
        check_range(self, "gpus", 0, MAX_GPUS)
        check_range(self, "gpu_memory", 0, MAX_MEMORY)
        check_text(self, "gpu_model", 128)
        for name in ("min_cuda", "min_compute_capability"):
            value = getattr(self, name)
            if value and not is_version(value):
                _fail(type(self), name, f"must be a version such as 12.4, got {value!r:.40}")
        if not 0 < self.timeout <= MAX_TIMEOUT or not math.isfinite(self.timeout):
            _fail(type(self), "timeout", f"must be in (0, {MAX_TIMEOUT}], got {self.timeout!r}")
        check_range(self, "max_price", 0, MAX_PRICE)
        check_range(self, "nodes", 1, MAX_NODES)
        check_len(self, "inputs", MAX_INPUTS)
        for i, one in enumerate(self.inputs):
            for other in self.inputs[i + 1:]:
                if _within(one.dest, other.dest) or _within(other.dest, one.dest):
                    _fail(type(self), "inputs", f"destinations {one.dest!r:.80} and {other.dest!r:.80} overlap")

    @property
    def input_size(self) -> int:
        """Declared bytes of all inputs together."""
        return sum(i.size for i in self.inputs)

    @property
    def data_size(self) -> int:
        """Declared bytes of job data the provider must take: the inputs and a carried image."""
        return self.input_size + (self.image_content.size if self.image_content else 0)
