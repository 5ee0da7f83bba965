"""Connection up/down events from the swarm, as a trio channel.

The swarm awaits its notifees inside connection set-up and tear-down, so the
notifee must never block: events go into a bounded channel with
``send_nowait`` and are dropped (and counted) when it is full; consumers also
reconcile against the live connection list, so a dropped event only delays
work.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.rcmgr.metrics import Direction
from multiaddr import Multiaddr

EVENT_BUFFER = 1024


class ConnectionEvents(INotifee):
    """Sends ``(peer_id, up, we_dialled)`` for every connection opened or closed."""

    def __init__(self) -> None:
        self._send, self.receive = trio.open_memory_channel[tuple[str, bool, bool]](EVENT_BUFFER)
        self.dropped = 0

    def _emit(self, conn: INetConn, up: bool) -> None:
        outbound = getattr(conn, "direction", Direction.UNKNOWN) != Direction.INBOUND
        try:
            self._send.send_nowait((str(conn.muxed_conn.peer_id), up, outbound))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._emit(conn, True)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._emit(conn, False)
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        await trio.lowlevel.checkpoint()
