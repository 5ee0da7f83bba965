"""How long stopping may take: the drain's total budget, step by step. Pure.

SIGTERM drains in four steps, each bounded, the whole bounded by their sum:

    grace     = limits.drain_grace               running jobs may finish
    interrupt = limits.stop_grace + STOP_MARGIN  the rest are stopped and report ``interrupted``
    deliver   = network.io_timeout + STOP_MARGIN task streams send results, take receipts
    announce  = ADVERT_FLUSH                     the draining advert goes out

After the drain the services stop and the store closes (``EXIT_MARGIN``).
``stop_timeout`` is what systemd's ``TimeoutStopSec`` must at least be;
systemd/peerd.service carries it for the default config (a test checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peerd.config import Config

STOP_MARGIN = 10.0  # seconds past stop_grace / io_timeout a step waits before moving on
ADVERT_FLUSH = 3.0  # how long the drain waits for its draining advert to go out
EXIT_MARGIN = 10.0  # after the drain: services stop, the store closes, the process exits


@dataclass(frozen=True, slots=True)
class DrainBudget:
    grace: float
    interrupt: float
    deliver: float
    announce: float

    @property
    def total(self) -> float:
        return self.grace + self.interrupt + self.deliver + self.announce


def drain_budget(config: Config) -> DrainBudget:
    return DrainBudget(
        grace=config.limits.drain_grace,
        interrupt=config.limits.stop_grace + STOP_MARGIN,
        deliver=config.network.io_timeout + STOP_MARGIN,
        announce=ADVERT_FLUSH,
    )


def stop_timeout(config: Config) -> int:
    """Whole seconds systemd must wait after SIGTERM before it may SIGKILL."""
    return math.ceil(drain_budget(config).total + EXIT_MARGIN)
