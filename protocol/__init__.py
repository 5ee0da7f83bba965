"""peerd's wire protocol, with no I/O.

Imports only the standard library, msgpack and cryptography. Callers pass the
time (``now``) where it matters. See ``protocol/README.md`` for the wire format.
"""

from .codec import FrameDecoder, decode, decode_as, encode, encode_frame, frame
from .errors import (
    DecodeError,
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SignatureError,
    StaleError,
)
from .schema import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "DecodeError",
    "FrameDecoder",
    "FrameTooLarge",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SignatureError",
    "StaleError",
    "decode",
    "decode_as",
    "encode",
    "encode_frame",
    "frame",
]
