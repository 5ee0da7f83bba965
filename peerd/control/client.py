"""``ControlClient``: a small blocking client of the control socket.

Plain ``socket``, no trio, so the CLI starts fast; the protocol (hello,
request ids, streams) is ``protocol.control.ControlClientConnection``.
``connect()`` opens the socket and says hello; ``call()`` sends one request
and returns its result; ``stream()`` yields the results of a streamed command.
Errors: ``DaemonUnreachable`` (nothing answers, or the daemon went away),
``ControlCallError`` (the daemon answered with an error code) and
``ControlProtocolError`` (what came back was not the control protocol).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from peerd import __version__
from peerd.control.errors import ControlCallError, ControlProtocolError, DaemonUnreachable
from peerd.control.wire import RESPONSE_MAX_FRAME
from protocol.control import NEED_DATA, ControlClientConnection
from protocol.control_messages import ControlResponse
from protocol.errors import ProtocolError
from protocol.schema import Value

READ_CHUNK = 64 << 10
DEFAULT_TIMEOUT = 10.0


class ControlClient:
    """One connection to the daemon at ``path``; use as a context manager.

    ``timeout`` bounds connecting and each unary call (None: no limit).
    """

    def __init__(self, path: Path, timeout: float | None = DEFAULT_TIMEOUT, *,
                 client: str = f"peerd-cli/{__version__}") -> None:
        self.path = path
        self.timeout = timeout
        self.client = client
        self.daemon_version = ""
        self._sock: socket.socket | None = None
        self._conn = ControlClientConnection(client, max_frame=RESPONSE_MAX_FRAME)

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and say hello; raises DaemonUnreachable if nobody answers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(_unreachable(self.path, exc)) from exc
        self._sock = sock
        self._conn = ControlClientConnection(self.client, max_frame=RESPONSE_MAX_FRAME)
        self._write(self._conn.hello())
        hello = self._receive(0, self.timeout).result
        if isinstance(hello, dict) and isinstance(hello.get("daemon"), str):
            self.daemon_version = str(hello["daemon"])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, command: str, args: Mapping[str, Value] | None = None, *,
             no_timeout: bool = False) -> Value:
        """Run a unary command; ``no_timeout`` for one that blocks (``wait``)."""
        request_id = self._request(command, args)
        response = self._receive(request_id, None if no_timeout else self.timeout)
        if response.more:
            raise ControlProtocolError(f"{command!r} answered with a stream")
        return response.result

    def stream(self, command: str, args: Mapping[str, Value] | None = None) -> Iterator[Value]:
        """Run a streamed command; yields each result until the daemon ends the stream."""
        request_id = self._request(command, args)
        while True:
            response = self._receive(request_id, None)
            if not response.more:
                if response.result is not None:
                    yield response.result
                return
            yield response.result

    # ------------------------------------------------------------ I/O
    def _request(self, command: str, args: Mapping[str, Value] | None) -> int:
        self._connected()
        try:
            request_id, data = self._conn.request(command, dict(args or {}))
        except ProtocolError as exc:
            raise ControlProtocolError(f"cannot send {command!r}: {exc}") from exc
        self._write(data)
        return request_id

    def _write(self, data: bytes) -> None:
        try:
            self._connected().sendall(data)
        except OSError as exc:
            raise DaemonUnreachable(f"lost the daemon at {self.path}: {exc}") from exc

    def _receive(self, request_id: int, timeout: float | None) -> ControlResponse:
        """The next response to ``request_id``; an error response raises ControlCallError."""
        sock = self._connected()
        sock.settimeout(timeout)
        try:
            while (response := self._conn.next_response()) is NEED_DATA:
                self._conn.receive_data(sock.recv(READ_CHUNK))
        except TimeoutError as exc:
            raise DaemonUnreachable(f"the daemon did not answer within {timeout}s") from exc
        except OSError as exc:
            raise DaemonUnreachable(f"lost the daemon at {self.path}: {exc}") from exc
        except ProtocolError as exc:
            raise ControlProtocolError(f"the daemon sent an invalid response: {exc}") from exc
        if not isinstance(response, ControlResponse):  # CLOSED
            raise DaemonUnreachable("the daemon closed the connection")
        if response.error is not None:
            raise ControlCallError(response.error.code, response.error.message)
        if response.id != request_id:
            raise ControlProtocolError(f"expected an answer to request {request_id}, got {response.id}")
        return response

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise DaemonUnreachable("not connected; call connect() first")
        return self._sock


def _unreachable(path: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no daemon: {path} does not exist (is `peerd run` running?)"
    if isinstance(exc, ConnectionRefusedError):
        return f"no daemon is listening on {path}"
    if isinstance(exc, PermissionError):
        return f"permission denied on {path} (are you in its group?)"
    return f"cannot connect to {path}: {exc.strerror or exc}"
