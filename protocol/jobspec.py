"""``JobSpec``: what a requester wants run.

Its own module so that the CLI can build and check one without creating every
other message class (``protocol.messages`` re-exports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .limits import MAX_CPUS, MAX_GPUS, MAX_MEMORY, MAX_PRICE, MAX_TIMEOUT
from .schema import Struct, check_len, check_range, check_text, fail as _fail


@dataclass(frozen=True, slots=True)
class JobSpec(Struct):
    """What a requester wants run."""

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

    def _check(self) -> None:
        check_text(self, "image", 256, nonempty=True)
        check_len(self, "command", 256)
        check_len(self, "env", 128)
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                _fail(type(self), "env", f"has an invalid name {key!r}")
        if not 0 < self.cpus <= MAX_CPUS or not math.isfinite(self.cpus):
            _fail(type(self), "cpus", f"must be in (0, {MAX_CPUS}], got {self.cpus!r}")
        check_range(self, "memory", 4 << 20, MAX_MEMORY)
        check_range(self, "gpus", 0, MAX_GPUS)
        check_range(self, "gpu_memory", 0, MAX_MEMORY)
        check_text(self, "gpu_model", 128)
        if not 0 < self.timeout <= MAX_TIMEOUT or not math.isfinite(self.timeout):
            _fail(type(self), "timeout", f"must be in (0, {MAX_TIMEOUT}], got {self.timeout!r}")
        check_range(self, "max_price", 0, MAX_PRICE)
