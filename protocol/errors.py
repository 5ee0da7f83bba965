"""Protocol errors.

Every failure to decode, verify or follow the protocol raises a ProtocolError.
``LocalProtocolError`` means *we* were about to break the protocol (a bug or a
bad argument on our side); ``RemoteProtocolError`` means the peer did. Each
carries a short machine-readable ``code`` that can be sent on the wire.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by the ``protocol`` package."""

    code: str = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to send or build something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class DecodeError(RemoteProtocolError):
    """Bytes could not be decoded into a valid message."""

    code = "malformed"


class FrameTooLarge(DecodeError):
    """A frame's declared length exceeds the maximum frame size."""

    code = "frame_too_large"


class SignatureError(RemoteProtocolError):
    """A signature is invalid or the signer is not who it claims to be."""

    code = "bad_signature"


class StaleError(RemoteProtocolError):
    """A signed document is expired, future-dated or replayed."""

    code = "stale"
