"""The control socket's messages: ``ControlRequest``, ``ControlResponse``, ``ControlError``.

Their own module so that the CLI speaks the control protocol without creating
every network message class (``protocol.messages`` re-exports them and lists
them in ``MESSAGE_TYPES``). ``CONTROL_TYPES`` is the table the CLI decodes with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .limits import MAX_COUNT
from .schema import Message, Struct, Value, check_range, check_text


@dataclass(frozen=True, slots=True)
class ControlError(Struct):
    code: str
    message: str

    def _check(self) -> None:
        check_text(self, "code", 64, nonempty=True)
        check_text(self, "message", 4096)


@dataclass(frozen=True, slots=True)
class ControlRequest(Message):
    """CLI → daemon: run ``command`` with ``args``; ``id`` matches the replies."""

    TYPE: ClassVar[str] = "ctl_request"
    id: int
    command: str
    args: dict[str, Value]

    def _check(self) -> None:
        check_range(self, "id", 0, MAX_COUNT)
        check_text(self, "command", 64, nonempty=True)


@dataclass(frozen=True, slots=True)
class ControlResponse(Message):
    """Daemon → CLI: a result or an error for request ``id``.

    A streamed command sends several responses with ``more=True`` and closes
    with one that has ``more=False``.
    """

    TYPE: ClassVar[str] = "ctl_response"
    id: int
    result: Value
    error: ControlError | None
    more: bool = False

    def _check(self) -> None:
        check_range(self, "id", 0, MAX_COUNT)


CONTROL_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in (ControlRequest, ControlResponse)}
