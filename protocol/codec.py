"""Encoding, decoding and stream framing.

``encode(msg)`` turns a Message into a msgpack map; ``decode(data)`` turns bytes
back into a Message or raises a ``ProtocolError`` saying what was wrong —
nothing else escapes it. On streams each message is one frame: a 4-byte
big-endian length followed by that many bytes. The length is checked against
the maximum frame size before anything is buffered or unpacked.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Iterator

import msgpack

from .errors import DecodeError, FrameTooLarge, LocalProtocolError
from .schema import PROTOCOL_VERSION, Message

DEFAULT_MAX_FRAME = 4 << 20


class Sentinel(enum.Enum):
    """What a sans-IO connection returns when it has no message to give."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    CLOSED = "CLOSED"  # the peer closed its side at a frame boundary


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED
_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def _no_ext(code: int, data: bytes) -> object:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def _map_without_duplicates(pairs: list[tuple[object, object]]) -> dict[object, object]:
    # Implementations differ on which duplicate wins; signed bytes must not be
    # read two ways, so a repeated key makes the document invalid.
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise DecodeError("a map repeats a key")
    return mapping


def _unpack(data: bytes) -> object:
    limit = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_map_without_duplicates,
            ext_hook=_no_ext,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgpack's own errors (ExtraData, FormatError, StackError, OutOfData…)
        # derive from ValueError; invalid UTF-8 raises UnicodeDecodeError.
        raise DecodeError(f"not a valid msgpack document: {exc}") from exc
    except msgpack.UnpackException as exc:
        raise DecodeError(f"not a valid msgpack document: {exc}") from exc


_ALL_TYPES: dict[str, type[Message]] = {}


def _all_types() -> dict[str, type[Message]]:
    if not _ALL_TYPES:
        # Imported on first use: creating every message class costs the CLI,
        # which decodes control messages only, tens of milliseconds per run.
        from .messages import MESSAGE_TYPES

        _ALL_TYPES.update(MESSAGE_TYPES)
    return _ALL_TYPES


def decode(data: bytes, types: dict[str, type[Message]] | None = None) -> Message:
    """Decode one message; raise ProtocolError (and only that) if invalid.

    ``types``: the message table by tag (default every message, ``MESSAGE_TYPES``).
    """
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        raise DecodeError("empty message")
    value = _unpack(data)
    if type(value) is not dict:
        raise DecodeError(f"message must be a map, got {type(value).__name__}")
    version = value.get("v")
    if type(version) is not int:
        raise DecodeError("message has no integer protocol version 'v'")
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    tag = value.get("t")
    cls = (types or _ALL_TYPES or _all_types()).get(tag) if type(tag) is str else None
    if cls is None:
        raise DecodeError(f"unknown message type {tag!r}")
    return cls.from_wire(value, cls.__name__, reserved=2)


def decode_as(data: bytes, cls: type[Message]) -> Message:
    """Decode and insist on one message class."""
    msg = decode(data)
    if type(msg) is not cls:
        raise DecodeError(f"expected {cls.TYPE!r}, got {msg.TYPE!r}")
    return msg


def encode(msg: Message) -> bytes:
    """Encode a message; it must already be valid (it was checked on construction)."""
    if not isinstance(msg, Message) or not msg.TYPE:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: not a message")
    try:
        packed: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True, datetime=False)
        return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {msg.TYPE}: {exc}") from exc


def frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length."""
    if len(payload) > max_frame:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds {max_frame}")
    return _HEADER.pack(len(payload)) + payload


def encode_frame(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    return frame(encode(msg), max_frame)


class FrameDecoder:
    """Reassembles length-prefixed frames from arbitrary byte chunks.

    Feed bytes with ``receive_data``; take complete frames with
    ``next_frame`` (None when more data is needed). An oversize length
    raises ``FrameTooLarge`` as soon as the header arrives.

    The pieces received are kept as they came (a queue and a running length)
    and a frame's bytes are joined once, when the whole frame is present: a
    1 MiB frame fed in 64 KiB pieces costs one copy of its payload, not one
    copy of the buffer per piece (or of what follows it when it is taken).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._pieces: deque[bytes] = deque()  # received and not yet taken, oldest first
        self._offset = 0  # bytes of the first piece already taken
        self._size = 0  # bytes received and not yet taken
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        self._pieces.append(bytes(data))  # no copy when it is bytes already
        self._size += len(data)
        self._checked_length()

    def _length(self) -> int | None:
        """The length field of the frame at the front, once its header is in (unchecked)."""
        if self._size < HEADER_SIZE:
            return None
        first = self._pieces[0]
        if len(first) - self._offset >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(first, self._offset)
            return int(length)
        head = first[self._offset:]  # a header split over pieces (rare): its 4 bytes, nothing taken
        for k in range(1, len(self._pieces)):
            head += self._pieces[k][:HEADER_SIZE - len(head)]
            if len(head) == HEADER_SIZE:
                break
        (length,) = _HEADER.unpack(head)
        return int(length)

    def _checked_length(self) -> int | None:
        length = self._length()
        if length is not None and length > self.max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the maximum of {self.max_frame}")
        return length

    def next_frame(self) -> bytes | None:
        length = self._checked_length()
        if length is None or self._size < HEADER_SIZE + length:
            self._check_eof()
            return None
        self._take(HEADER_SIZE)
        payload = self._take(length)
        # A following oversize header is reported by the next call, not this
        # one: raising here would lose the complete frame just taken.
        return payload

    def _take(self, size: int) -> bytes:
        """Remove and return the next ``size`` bytes (all received): one copy."""
        if not size:
            return b""
        first = self._pieces[0]
        start = self._offset
        if len(first) - start >= size:  # within the first piece
            out = first[start:start + size] if start or size < len(first) else first
            self._advance(first, start + size)
            self._size -= size
            return out
        parts: list[memoryview] = []
        need = size
        while need:
            first = self._pieces[0]
            start = self._offset
            take = min(len(first) - start, need)
            parts.append(memoryview(first)[start:start + take])
            self._advance(first, start + take)
            need -= take
        self._size -= size
        return b"".join(parts)

    def _advance(self, first: bytes, offset: int) -> None:
        if offset == len(first):
            self._pieces.popleft()
            self._offset = 0
        else:
            self._offset = offset

    def _check_eof(self) -> None:
        if self._eof and self._size:
            raise DecodeError(f"stream closed inside a frame ({self._size} bytes pending)")

    @property
    def ready(self) -> int:
        """The payload size of the complete frame ``next_frame`` would return now (0: none, or an empty one)."""
        length = self._length()
        if length is None:
            return 0
        return length if length <= self.max_frame and self._size >= HEADER_SIZE + length else 0

    @property
    def closed(self) -> bool:
        """True once the peer closed and every complete frame was taken."""
        return self._eof and not self._size

    @property
    def pending(self) -> int:
        return self._size


def iter_frames(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Iterator[bytes]:
    """Split a complete byte string into frames (raises on a truncated tail)."""
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    while (payload := decoder.next_frame()) is not None:
        yield payload
