"""Control-protocol constants for the daemon's end and the CLI's end.

The protocol itself (hello, request ids, streaming with ``more``, error
responses) is ``protocol.control``; this module adds what peerd decides: the
frame limits, the error codes that protocol does not define, and ``to_value``,
which turns a node operation's result into wire data.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from protocol.control import (
    BAD_ARGS,
    CONTROL_VERSION,
    FAILED,
    HELLO,
    HELLO_REQUIRED,
    MALFORMED,
    UNAVAILABLE,
    UNKNOWN_COMMAND,
    UNSUPPORTED_VERSION,
)
from protocol.schema import Value

# Requests are small (a job spec at most); responses may carry task output.
REQUEST_MAX_FRAME = 1 << 20
RESPONSE_MAX_FRAME = 16 << 20
MAX_MESSAGE = 4096  # ControlError.message limit

# Codes peerd adds to protocol.control's.
NOT_FOUND = "not_found"  # no such task
RESPONSE_TOO_LARGE = "response_too_large"  # the answer exceeds RESPONSE_MAX_FRAME
INTERNAL = "internal"  # a daemon bug; logged there; the connection is closed

__all__ = [
    "BAD_ARGS", "CONTROL_VERSION", "FAILED", "HELLO", "HELLO_REQUIRED", "INTERNAL", "MALFORMED",
    "MAX_MESSAGE", "NOT_FOUND", "REQUEST_MAX_FRAME", "RESPONSE_MAX_FRAME", "RESPONSE_TOO_LARGE",
    "UNAVAILABLE", "UNKNOWN_COMMAND", "UNSUPPORTED_VERSION", "to_value",
]


def to_value(obj: object) -> Value:
    """Turn a handler's result into plain wire data, or raise TypeError.

    Accepts wire scalars, enums, mappings with string keys (TypedDict views),
    lists, tuples and objects with ``to_dict()`` or ``to_wire()`` (protocol
    structs) or frozen dataclasses.
    """
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, enum.Enum):
        return to_value(obj.value)
    if isinstance(obj, Mapping):
        out: dict[str, Value] = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"map key {key!r} is not a string")
            out[key] = to_value(item)
        return out
    if isinstance(obj, list | tuple):
        return [to_value(item) for item in obj]
    for method in ("to_dict", "to_wire"):
        convert = getattr(obj, method, None)
        if callable(convert):
            return to_value(convert())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_value(dataclasses.asdict(obj))
    raise TypeError(f"{type(obj).__name__} is not wire data")
