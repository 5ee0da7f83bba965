"""Executor errors and the reason codes they carry.

Every refusal or failure of the executor is an ``ExecutorError`` with a
``reason`` from ``Reason`` (a ``str`` enum, so it compares equal to its wire
string) and a human ``detail``. The provider maps reasons to reject codes;
nobody should parse ``detail``.
"""

from __future__ import annotations

from enum import StrEnum

from peerd.errors import PeerdError


class Reason(StrEnum):
    """Why the executor refused or failed; stable strings."""

    # spec / policy (refused before anything is created)
    INVALID_SPEC = "invalid_spec"
    IMAGE_NOT_ALLOWED = "image_not_allowed"
    TIME_LIMIT_TOO_LONG = "time_limit_too_long"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    CPUS_OVER_LIMIT = "cpus_over_limit"
    MEMORY_OVER_LIMIT = "memory_over_limit"
    NO_GPU_RUNTIME = "no_gpu_runtime"
    OVERLAY_UNAVAILABLE = "overlay_unavailable"  # a gang member, on a host that cannot make overlays
    # capacity ledger
    NO_CAPACITY = "no_capacity"
    NO_MATCHING_GPU = "no_matching_gpu"
    UNKNOWN_RESERVATION = "unknown_reservation"
    DUPLICATE_TASK = "duplicate_task"
    RESERVATION_EXPIRED = "reservation_expired"
    GPU_CONFLICT = "gpu_conflict"
    # engine / lifecycle
    DOCKER_UNAVAILABLE = "docker_unavailable"
    IMAGE_UNAVAILABLE = "image_unavailable"
    TASK_EXISTS = "task_exists"
    UNKNOWN_TASK = "unknown_task"
    START_FAILED = "start_failed"
    ENGINE_ERROR = "engine_error"
    OUTPUT_ERROR = "output_error"
    OVERLAY_FAILED = "overlay_failed"  # the gang member's WireGuard interface could not be set up
    # how a job ended (RunOutcome.reason), where its state alone does not say it
    OUTPUT_LIMIT = "output_limit"  # /out filled up while it ran: it was stopped


class ExecutorError(PeerdError):
    """A typed executor failure: ``reason`` is machine-readable, ``detail`` is for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidSpec(ExecutorError):
    """A RunSpec field is malformed (bad task id, negative limits, reserved env...)."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.INVALID_SPEC, detail)


class PolicyError(ExecutorError):
    """The provider's policy (or this host) refuses the job; nothing was started."""


class CapacityError(ExecutorError):
    """The capacity ledger cannot satisfy or find a reservation."""


class EngineError(ExecutorError):
    """dockerd refused, failed or is unreachable."""


class PullFailure(StrEnum):
    """Why a pull failed, as far as dockerd's answer tells (the start of a failed pull's detail)."""

    NOT_FOUND = "not found"  # the registry answered: no such repository, tag or manifest
    UNAUTHORIZED = "unauthorized"  # the registry wants credentials this dockerd does not have
    UNREACHABLE = "registry unreachable"  # no connection (refused, no route, DNS, TLS)
    TIMEOUT = "timeout"  # no answer within the pull timeout
    OTHER = "failed"


class ImageUnavailable(EngineError):
    """The image is not present locally and could not be pulled (``why`` says how the pull failed)."""

    def __init__(self, detail: str, why: PullFailure | None = None) -> None:
        super().__init__(Reason.IMAGE_UNAVAILABLE, f"{why.value}: {detail}" if why else detail)
        self.why = why


class UnknownTask(ExecutorError):
    """The executor has no such task (never started here, or already collected)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(Reason.UNKNOWN_TASK, f"no task {task_id!r} on this executor")
