"""The dial-back check (``/peerd/dialback/1.0.0``): is a node reachable from outside?

A node asks a peer to open a TCP connection back to it. The request names
only ports: the peer dials the address it *observes* the request coming from
(never an address the asker chooses, so nobody can aim it at a third party),
on each port, and answers whether any connection was accepted. Behind a home
router the observed address is the router's, whose port is closed: the node
learns that nobody can dial it. Refused over a relayed connection.

Wire format (sans-IO, fixed size, checked before use):

    request   1 byte n (1..MAX_PORTS), then n ports, each 2 bytes big-endian, none 0
    response  1 byte: REACHED (1) or NOT_REACHED (0)
"""

from __future__ import annotations

from .errors import DecodeError

PROTOCOL = "/peerd/dialback/1.0.0"
MAX_PORTS = 4
REACHED = b"\x01"
NOT_REACHED = b"\x00"
MAX_REQUEST = 1 + 2 * MAX_PORTS


def encode_request(ports: list[int]) -> bytes:
    unique = sorted(set(ports))[:MAX_PORTS]
    if not unique or any(not 0 < p < 65536 for p in unique):
        raise ValueError(f"ports must be 1..65535, 1 to {MAX_PORTS} of them: {ports!r}")
    return bytes([len(unique)]) + b"".join(p.to_bytes(2, "big") for p in unique)


def request_size(first: bytes) -> int:
    """The whole request's size from its first byte; DecodeError when out of range."""
    if len(first) != 1 or not 1 <= first[0] <= MAX_PORTS:
        raise DecodeError("dial-back request: bad port count")
    return 1 + 2 * first[0]


def decode_request(data: bytes) -> list[int]:
    if len(data) < 1 or len(data) != request_size(data[:1]):
        raise DecodeError("dial-back request: wrong size")
    ports = [int.from_bytes(data[i:i + 2], "big") for i in range(1, len(data), 2)]
    if 0 in ports:
        raise DecodeError("dial-back request: port 0")
    return ports


def decode_response(data: bytes) -> bool:
    if data not in (REACHED, NOT_REACHED):
        raise DecodeError("dial-back response: not 0 or 1")
    return data == REACHED
