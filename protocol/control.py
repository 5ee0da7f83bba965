"""The control socket protocol (CLI ↔ daemon), without I/O.

The control socket is a unix stream socket. Each direction carries frames
(``codec.frame``) of plain, unsigned messages: ``ControlRequest`` from the
client, ``ControlResponse`` from the daemon. Rules:

1. The client's first request is ``hello`` with args
   ``{"version": CONTROL_VERSION, "client": str}``. The daemon answers
   ``{"version": CONTROL_VERSION, "daemon": str}``, or an error with code
   ``unsupported_version`` (then closes); any other first request is answered
   with ``hello_required`` and the connection closed.
2. Each request carries an ``id`` unique among the client's outstanding
   requests; every response names the request it answers. A streamed command
   answers with several responses with ``more=True`` and a last one with
   ``more=False``; an error response is always the last.
3. A frame that does not decode is answered with ``malformed`` (id 0) and
   the connection is closed.
"""

from __future__ import annotations

from .codec import CLOSED, DEFAULT_MAX_FRAME, NEED_DATA, FrameDecoder, Sentinel, decode, encode, frame
from .control_messages import CONTROL_TYPES, ControlError, ControlRequest, ControlResponse
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .schema import PROTOCOL_VERSION, Value

CONTROL_VERSION = PROTOCOL_VERSION
HELLO = "hello"
MAX_MESSAGE = 4096  # ControlError.message

# Error codes (ControlError.code).
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGS = "bad_args"
MALFORMED = "malformed"
UNSUPPORTED_VERSION = "unsupported_version"
HELLO_REQUIRED = "hello_required"
FAILED = "failed"
UNAVAILABLE = "unavailable"
ERROR_CODES = frozenset(
    {UNKNOWN_COMMAND, BAD_ARGS, MALFORMED, UNSUPPORTED_VERSION, HELLO_REQUIRED, FAILED, UNAVAILABLE}
)

__all__ = [
    "BAD_ARGS", "CLOSED", "CONTROL_VERSION", "ERROR_CODES", "FAILED", "HELLO", "HELLO_REQUIRED",
    "MALFORMED", "NEED_DATA", "UNAVAILABLE", "UNKNOWN_COMMAND", "UNSUPPORTED_VERSION",
    "ControlClientConnection", "ControlRefused", "ControlServerConnection", "fail", "hello",
    "hello_ok", "ok", "request",
]


# ---------------------------------------------------------------- builders
def request(id: int, command: str, args: dict[str, Value] | None = None) -> ControlRequest:
    return ControlRequest(id=id, command=command, args=args or {})


def hello(id: int, client: str) -> ControlRequest:
    return request(id, HELLO, {"version": CONTROL_VERSION, "client": client})


def ok(id: int, result: Value, more: bool = False) -> ControlResponse:
    return ControlResponse(id=id, result=result, error=None, more=more)


def fail(id: int, code: str, message: str) -> ControlResponse:
    """An error response; ``message`` is cut to the 4096 characters the wire allows."""
    error = ControlError(code=code, message=message[:MAX_MESSAGE])
    return ControlResponse(id=id, result=None, error=error, more=False)


def hello_ok(id: int, daemon: str) -> ControlResponse:
    return ok(id, {"version": CONTROL_VERSION, "daemon": daemon})


class ControlRefused(RemoteProtocolError):
    """The client broke the control protocol: send ``response``, then close."""

    def __init__(self, request_id: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.response = fail(request_id, code, message)


# ---------------------------------------------------------------- server side
class ControlServerConnection:
    """The daemon's side of one control connection: bytes in, requests out."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._frames = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.client: str | None = None
        self._broken: ControlRefused | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the client closed."""
        if self._broken is None:
            try:
                self._frames.receive_data(data)
            except ProtocolError as exc:
                self._broken = ControlRefused(0, MALFORMED, str(exc))

    def next_request(self) -> ControlRequest | Sentinel:
        """The next request (hello included), NEED_DATA or CLOSED.

        Raises ``ControlRefused`` (carrying the error response to send) for a
        malformed frame, a bad hello or a request before hello.
        """
        if self._broken is not None:
            raise self._broken
        try:
            payload = self._frames.next_frame()
            if payload is None:
                return CLOSED if self._frames.closed else NEED_DATA
            msg = decode(payload)
        except ProtocolError as exc:
            self._broken = ControlRefused(0, MALFORMED, str(exc))
            raise self._broken from exc
        if not isinstance(msg, ControlRequest):
            self._broken = ControlRefused(0, MALFORMED, f"expected a control request, got {msg.TYPE!r}")
            raise self._broken
        if self.client is None:
            self._check_hello(msg)
        return msg

    def _check_hello(self, msg: ControlRequest) -> None:
        if msg.command != HELLO:
            self._broken = ControlRefused(msg.id, HELLO_REQUIRED, f"say {HELLO!r} first")
            raise self._broken
        version, client = msg.args.get("version"), msg.args.get("client")
        if type(version) is not int or version != CONTROL_VERSION:
            self._broken = ControlRefused(
                msg.id, UNSUPPORTED_VERSION,
                f"client speaks control version {version!r}; this daemon speaks {CONTROL_VERSION}",
            )
            raise self._broken
        if type(client) is not str:
            self._broken = ControlRefused(msg.id, BAD_ARGS, "hello needs a 'client' string")
            raise self._broken
        self.client = client

    def send(self, response: ControlResponse) -> bytes:
        return frame(encode(response), self.max_frame)


# ---------------------------------------------------------------- client side
class ControlClientConnection:
    """The CLI's side: numbers requests and matches responses to them."""

    def __init__(self, client: str, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.client = client
        self.max_frame = max_frame
        self._frames = FrameDecoder(max_frame)
        self._next_id = 0
        self._pending: set[int] = set()
        self._broken: ProtocolError | None = None

    def hello(self) -> bytes:
        """The first frame to write; its response is the daemon's hello answer."""
        if self._next_id:
            raise LocalProtocolError("hello must be the first request")
        return self._send(hello(self._take_id(), self.client))

    def request(self, command: str, args: dict[str, Value] | None = None) -> tuple[int, bytes]:
        """Frame a request; returns its id and the bytes to write."""
        if not self._next_id:
            raise LocalProtocolError("send hello() first")
        req_id = self._take_id()
        return req_id, self._send(request(req_id, command, args))

    def _take_id(self) -> int:
        req_id = self._next_id
        self._next_id += 1
        return req_id

    def _send(self, req: ControlRequest) -> bytes:
        data = frame(encode(req), self.max_frame)
        self._pending.add(req.id)
        return data

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means the daemon closed.

        Never raises: an oversize frame header is reported by ``next_response``.
        """
        if self._broken is None:
            try:
                self._frames.receive_data(data)
            except ProtocolError as exc:
                self._broken = exc

    def next_response(self) -> ControlResponse | Sentinel:
        """The next response, NEED_DATA or CLOSED; RemoteProtocolError if the daemon errs."""
        if self._broken is not None:
            raise RemoteProtocolError(str(self._broken), code=self._broken.code)
        payload = self._frames.next_frame()
        if payload is None:
            return CLOSED if self._frames.closed else NEED_DATA
        msg = decode(payload, CONTROL_TYPES)
        if not isinstance(msg, ControlResponse):
            raise RemoteProtocolError(f"expected a control response, got {msg.TYPE!r}")
        if msg.id not in self._pending:
            if msg.error is not None and msg.id == 0:
                return msg  # the daemon refusing the connection (e.g. a malformed frame)
            raise RemoteProtocolError(f"response to unknown request id {msg.id}")
        if not msg.more or msg.error is not None:
            self._pending.discard(msg.id)
        return msg

    @property
    def pending(self) -> frozenset[int]:
        """Ids of requests still waiting for their last response."""
        return frozenset(self._pending)
