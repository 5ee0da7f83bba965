"""The daemon's error base.

Every error raised by peerd code derives from PeerdError. Each area defines its
own subclasses next to its code and translates foreign exceptions (docker,
libp2p, sqlite3, OSError) at its boundary with ``raise X(...) from exc``.
"""


class PeerdError(Exception):
    """Base of every error peerd raises on purpose."""


class ConfigError(PeerdError):
    """The configuration or the node's home is unusable."""
