"""This node's reachability: the dial-back check, both sides, and the view status shows.

py-libp2p's AutoNAT server "dials back" with ``host.connect``, which returns at
once because the asker is already connected: every node is told it is public
(defect 13 in docs/py-libp2p.md). ``serve_dialback`` is our server instead: a
plain TCP connect to the observed address on the asked ports
(``protocol.dialback``). ``Prober`` asks up to ``ASK`` connected peers (seeds
first) and keeps the verdict: PUBLIC when any reached us, not reachable when
all that answered could not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from peerd.p2p.dialing import StreamOpening
from peerd.p2p.errors import P2PError
from peerd.p2p.streams import Stream, short
from protocol import dialback
from protocol.errors import DecodeError
from protocol.reachability import HINTS, Reachability

log = logging.getLogger(__name__)

ASK = 3  # peers asked per check
DIAL_TIMEOUT = 3.0  # the server's connect to each port
RECHECK = 300.0  # a node re-checks this often
RETRY = 2.0  # ... and this often while nobody has answered


@dataclass(frozen=True, slots=True)
class ReachabilityView:
    """What ``P2PService.reachability()`` returns: the state, our relayed addresses, a hint."""

    state: Reachability
    relay_addrs: tuple[str, ...]
    hint: str
    relays_lost: int = 0


def view(dialable: bool | None, relay_addrs: Sequence[str], relays_lost: int = 0) -> ReachabilityView:
    if dialable is None:
        state = Reachability.UNKNOWN
    elif dialable:
        state = Reachability.PUBLIC
    else:
        state = Reachability.RELAYED if relay_addrs else Reachability.UNREACHABLE
    addrs = tuple(relay_addrs) if state is Reachability.RELAYED else ()
    return ReachabilityView(state, addrs, HINTS[state], relays_lost)


async def serve_dialback(stream: Stream, observed: tuple[str, int] | None, relayed: bool) -> None:
    """Answer one dial-back request: TCP connect to the observed IP on each asked port."""
    first = await stream.read_exactly(1)
    ports = dialback.decode_request(first + await stream.read_exactly(dialback.request_size(first) - 1))
    reached = False
    if observed is not None and not relayed:
        for port in ports:
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    conn = await trio.open_tcp_stream(observed[0], port)
                except OSError:
                    continue
                await conn.aclose()
                reached = True
                break
    await stream.write(dialback.REACHED if reached else dialback.NOT_REACHED)


async def ask_dialback(opening: StreamOpening, ports: list[int]) -> bool:
    """One check on the stream ``opening`` opens."""
    async with opening as stream:
        await stream.write(dialback.encode_request(ports))
        return dialback.decode_response(await stream.read_exactly(1, timeout=DIAL_TIMEOUT * 2 + 2))


class Prober:
    """Keeps ``dialable``: None until a peer answered, then the latest verdict."""

    def __init__(self, ask: Callable[[str], Awaitable[bool]], peers: Callable[[], list[str]]) -> None:
        self._ask = ask
        self._peers = peers
        self.dialable: bool | None = None
        self.changed = trio.Event()

    async def check(self) -> bool | None:
        answers: list[bool] = []
        for peer in self._peers()[:ASK]:
            try:
                answers.append(await self._ask(peer))
            except (P2PError, DecodeError) as exc:
                log.debug("dial-back through …%s failed: %s", short(peer), exc)
                continue
            if answers[-1]:
                break
        if answers:
            verdict = any(answers)
            if verdict != self.dialable:
                log.info("reachability: %s", "public" if verdict else "not dialable from outside")
            self.dialable = verdict
        return self.dialable if answers else None

    async def run(self) -> None:
        while True:
            answered = await self.check()
            await trio.sleep(RECHECK if answered is not None else RETRY)
