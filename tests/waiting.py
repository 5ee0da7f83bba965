"""The one bounded wait for state that fires no event.

Wait on what the code fires whenever it can (a ``trio.Event``, ``TaskTracker.follow_events`` or
``wait_final``, a ``wait_changed``). ``eventually`` is for what has nothing to wait on: a row another
task writes to SQLite, a container dockerd creates or removes, libp2p's gossip mesh, a separate
process. It re-checks every ``interval`` seconds and fails, naming ``what``, after ``timeout``.
(``peerd.devnet.wait_for`` is its blocking twin, for tests that drive ``peerd`` processes.)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

Probe = Callable[[], "T | None | Awaitable[T | None]"]


async def eventually(what: str, probe: Probe[T], *, timeout: float, interval: float = 0.05) -> T:
    """The first truthy value of ``probe`` (sync or async); AssertionError after ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
