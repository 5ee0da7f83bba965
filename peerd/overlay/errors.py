"""The overlay package's one error base: every failure of ``ip``, ``wg`` or ``wireguard-go`` becomes
an ``OverlayError`` here; the executor translates it once into an ``ExecutorError``."""

from __future__ import annotations

from peerd.errors import PeerdError


class OverlayError(PeerdError):
    """A WireGuard interface could not be made, configured, moved or removed."""
