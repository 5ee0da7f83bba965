"""Where a requester's task can go, and how its stream gets there.

``Routes`` gives the requester its candidates (providers whose advert fits the
spec, from the peer table), every live provider (to ask when no advert fits),
and a byte stream to one of them: over libp2p, or through an in-process pipe to
this node's own provider (``submit --local``). ``serve_task_stream`` is the
provider's side: the task protocol's handler, counted so that a drain waits for
the streams still delivering results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from peerd.daemon.lifecycle import InFlight
from peerd.jobs.provider import Provider
from peerd.jobs.requester import Candidate
from peerd.jobs.taskwire import ByteStream
from peerd.market.reputation_book import ReputationBook
from peerd.market.rules import ever_fits
from peerd.p2p.service import P2PService
from peerd.p2p.streams import Stream, StreamHandler
from protocol.messages import JobSpec
from protocol.negotiation import TASK_PROTOCOL
from protocol.roles import NodeRole


class Routes:
    """The network as the requester sees it; ``provider`` is this node's own, if it is one."""

    def __init__(
        self, peer_id: str, p2p: P2PService, provider: Provider | None, reputation: ReputationBook | None = None
    ) -> None:
        self.peer_id = peer_id
        self.p2p = p2p
        self.provider = provider
        self.reputation = reputation

    def candidates(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        """Fitting providers, best first: fit, then price adjusted by reputation (``peerd.market.reputation``)."""
        if local:
            return [Candidate(peer_id=self.peer_id, addrs=[])] if self.provider else []
        trust = self.reputation.ranking(now) if self.reputation is not None else None
        entries = self.p2p.table.candidates(spec, now, exclude={self.peer_id}, trust=trust)
        return [Candidate(peer_id=e.peer_id, addrs=list(e.addrs)) for e in entries]

    def providers(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        """Every live provider but us (for asking when no advert fits the spec)."""
        if local:
            return []
        return [
            Candidate(peer_id=e.peer_id, addrs=list(e.addrs))
            for e in self.p2p.table.entries(now)
            if e.peer_id != self.peer_id and e.advert.role is NodeRole.PROVIDER and not e.advert.draining
        ]

    def could_run(self, spec: JobSpec, now: float, local: bool) -> list[Candidate]:
        """Live providers but us that could run ``spec`` once they have room (worth queueing for)."""
        if local:
            return []
        return [
            Candidate(peer_id=e.peer_id, addrs=list(e.addrs))
            for e in self.p2p.table.entries(now)
            if e.peer_id != self.peer_id and ever_fits(spec, e.advert)
        ]

    @asynccontextmanager
    async def open_stream(self, peer_id: str, addrs: list[str]) -> AsyncIterator[ByteStream]:
        if peer_id == self.peer_id and self.provider is not None:
            async with _local_stream(self.provider, self.peer_id) as stream:
                yield stream
            return
        async with self.p2p.open_stream(peer_id, TASK_PROTOCOL, addrs or None) as stream:
            yield stream


@asynccontextmanager
async def _local_stream(provider: Provider, peer_id: str) -> AsyncIterator[ByteStream]:
    """An in-process byte pipe to this node's own provider (``--local``)."""
    from peerd.jobs.localpipe import pipe_pair  # trio.testing's memory streams: loaded only when used

    ours, theirs = pipe_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(provider.handle_stream, theirs, peer_id)
        try:
            yield ours
        finally:
            await ours.close()


def task_stream_handler(provider: Provider, in_flight: InFlight) -> StreamHandler:
    """The task protocol's handler on a provider: each stream is counted while it is served."""

    async def serve(stream: Stream) -> None:
        with in_flight.hold():
            await provider.handle_stream(stream, stream.remote_peer)

    return serve
