"""Human sizes and durations: ``512M``, ``24G``, ``90s``, ``10m``, ``2h``.

Used by the config loader and the CLI; errors are ``ValueError`` with a
one-line message the caller prefixes with the key or flag name.
"""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_DECIMAL_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | int, *, decimal: bool = False) -> int:
    """Bytes from ``512M``, ``1.5G``, ``4096``; binary multiples (K = 1024). With ``decimal``, as GPU
    boxes are labelled: K = 1000, G = 10⁹, unless the unit says binary (``Gi``, ``GiB``)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 24G)")
    number, unit, suffix = match.groups()
    binary = not decimal or suffix.lower().startswith("i")
    value = float(number) * (_SIZE_UNITS[unit.lower()] if binary else 1000 ** _DECIMAL_POWER[unit.lower()])
    if not math.isfinite(value):
        raise ValueError(f"size too large: {text!r}")
    return int(value)


def parse_duration(text: str | int | float) -> float:
    """Seconds from ``90s``, ``10m``, ``2h``, ``1h30m`` or a bare number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip()
        try:
            value = float(raw)
        except ValueError:
            parts = _DURATION.findall(raw)
            if not parts or _DURATION.sub("", raw).strip():
                raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 2h)") from None
            value = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration must be a non-negative number of seconds: {text!r}")
    return value


def format_size(n: int) -> str:
    for unit, size in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
