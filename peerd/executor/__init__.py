"""Running leased jobs in Docker containers on this host.

  contract   RunSpec, RunOutcome, the Executor protocol
  errors     ExecutorError and its reason codes
  policy     ProviderPolicy: which jobs this host accepts
  gpus       CapacityLedger: exclusive GPUs + CPU/memory holds (pure)
  plan       spec -> container config with the isolation defaults (pure)
  reconcile  what to do with this node's containers after a restart (pure)
  logs       bounded output tails with followers
  outmount   /out as a tmpfs of the output limit (bounded while the job runs)
  outputs    the job's /out -> a manifest, its chunks into the chunk store
  engine     the docker SDK adapter (worker threads)
  docker     DockerExecutor, the service tying them together
"""

from peerd.executor.contract import (
    ContainerInfo,
    Executor,
    InputMount,
    LogChunk,
    OutputStore,
    PullProgress,
    RecoveryReport,
    RunOutcome,
    RunOutcomeState,
    RunSpec,
)
from peerd.executor.docker import DockerExecutor
from peerd.executor.engine import EngineInfo, inspect_engine
from peerd.executor.errors import (
    CapacityError,
    EngineError,
    ExecutorError,
    ImageUnavailable,
    InvalidSpec,
    PolicyError,
    Reason,
    UnknownTask,
)
from peerd.executor.gpus import CapacityLedger, FreeCapacity, Reservation
from peerd.executor.plan import Limits
from peerd.executor.policy import ProviderPolicy

__all__ = [
    "CapacityError",
    "CapacityLedger",
    "ContainerInfo",
    "DockerExecutor",
    "EngineError",
    "EngineInfo",
    "Executor",
    "ExecutorError",
    "FreeCapacity",
    "ImageUnavailable",
    "InputMount",
    "InvalidSpec",
    "Limits",
    "LogChunk",
    "OutputStore",
    "PolicyError",
    "ProviderPolicy",
    "PullProgress",
    "Reason",
    "RecoveryReport",
    "Reservation",
    "RunOutcome",
    "RunOutcomeState",
    "RunSpec",
    "UnknownTask",
    "inspect_engine",
]
