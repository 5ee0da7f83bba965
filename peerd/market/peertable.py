"""The peer table: the latest valid advert of every peer, pure (``now`` is passed in).

Every received advert goes through ``PeerTable.ingest``, which applies these
checks in order and stops at the first that fails, counting the outcome:

    own           the advert came from this node itself (ignored, not a drop)
    too_large     more than ``max_size`` bytes
    rate_limited  the source peer's token bucket is empty (before any crypto)
    duplicate     the exact bytes we already hold for that peer (not a drop)
    malformed     not a valid envelope holding an advert
    wrong_source  the envelope's signer is not the gossip message's source peer
    bad_signature the signature does not verify, or the advert's peer_id is not
                  its signer
    expired / future / replayed
                  freshness and replay (seq not newer than the one we hold)
    table_full    a new peer while the table holds ``max_entries``
    accepted      stored (replacing the peer's previous advert)

``source`` is the gossip message's origin peer, or None for adverts fetched
directly from a peer (those carry their own signature, and the signer must
still be the advert's peer_id). An entry lives until the advert's
``expires_at``, capped at ``max_ttl`` after it was received. Nothing raises
out of ``ingest``: a bad advert is a counted drop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from peerd.market import rules as market
from peerd.market.reputation import Trust
from protocol.codec import decode_as
from protocol.errors import DecodeError, ProtocolError, SignatureError, StaleError
from protocol.messages import Advert, Envelope, JobSpec
from protocol.schema import Value
from protocol.signing import DEFAULT_MAX_SKEW, AdvertCheck, open_advert

MAX_ADVERT_SIZE = 8 << 10


class AdvertVerdict(enum.StrEnum):
    OWN = "own"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    WRONG_SOURCE = "wrong_source"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FUTURE = "future"
    REPLAYED = "replayed"
    TABLE_FULL = "table_full"
    ACCEPTED = "accepted"


# Outcomes after which a gossip router may relay the message to others.
RELAYABLE = frozenset({AdvertVerdict.ACCEPTED, AdvertVerdict.DUPLICATE, AdvertVerdict.OWN})
DROPS = frozenset(AdvertVerdict) - RELAYABLE

_STALE_CODES = {"expired": AdvertVerdict.EXPIRED, "future": AdvertVerdict.FUTURE, "replayed": AdvertVerdict.REPLAYED}


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` spends one if it can."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One peer's latest accepted advert."""

    peer_id: str
    advert: Advert
    addrs: tuple[str, ...]
    received_at: float
    expires_at: float
    envelope: bytes


@dataclass(frozen=True, slots=True)
class TableLimits:
    max_size: int = MAX_ADVERT_SIZE
    max_entries: int = 10_000
    max_ttl: float = 3600.0
    max_skew: float = DEFAULT_MAX_SKEW
    rate: float = 2.0  # adverts per second per source peer, sustained
    burst: float = 10.0
    max_buckets: int = 4096


class PeerTable:
    """Latest advert per peer, with per-outcome counters."""

    def __init__(self, self_id: str, limits: TableLimits | None = None) -> None:
        self.self_id = self_id
        self.limits = limits or TableLimits()
        self._entries: dict[str, PeerEntry] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.counters: dict[str, int] = {o.value: 0 for o in AdvertVerdict}

    # ------------------------------------------------------------ ingest
    def ingest(self, data: bytes, *, source: str | None, now: float) -> AdvertVerdict:
        """Check an advert envelope and store it; return (and count) the outcome."""
        return self.admit(data, source=source, now=now)[0]

    def admit(
        self, data: bytes, *, source: str | None, now: float
    ) -> tuple[AdvertVerdict, PeerEntry | None]:
        """Like ``ingest``, also returning the entry stored (None unless accepted)."""
        outcome, entry = self._check(data, source, now)
        if entry is not None:
            self._entries[entry.peer_id] = entry
        self.counters[outcome.value] += 1
        return outcome, entry

    def _check(self, data: bytes, source: str | None, now: float) -> tuple[AdvertVerdict, PeerEntry | None]:
        if source == self.self_id:
            return AdvertVerdict.OWN, None
        if len(data) > self.limits.max_size:
            return AdvertVerdict.TOO_LARGE, None
        if source is not None and not self._bucket(source, now).take(now):
            return AdvertVerdict.RATE_LIMITED, None
        try:
            env = decode_as(data, Envelope)
        except ProtocolError:
            return AdvertVerdict.MALFORMED, None
        assert isinstance(env, Envelope)
        if source is not None and env.signer != source:
            return AdvertVerdict.WRONG_SOURCE, None
        if env.signer == self.self_id:
            return AdvertVerdict.OWN, None
        held = self.get(env.signer, now)
        if held is not None and held.envelope == data:
            return AdvertVerdict.DUPLICATE, None
        return self._open(data, source, now, held)

    def _open(
        self, data: bytes, source: str | None, now: float, held: PeerEntry | None
    ) -> tuple[AdvertVerdict, PeerEntry | None]:
        check = AdvertCheck(
            now=now,
            last_seq=held.advert.seq if held is not None else None,
            max_skew=self.limits.max_skew,
        )
        try:
            advert = open_advert(data, source_peer=source, check=check)
        except StaleError as exc:
            return _STALE_CODES.get(exc.code, AdvertVerdict.EXPIRED), None
        except SignatureError:
            return AdvertVerdict.BAD_SIGNATURE, None
        except (DecodeError, ProtocolError):
            return AdvertVerdict.MALFORMED, None
        if held is None and len(self._entries) >= self.limits.max_entries:
            self.expire(now)
            if len(self._entries) >= self.limits.max_entries:
                return AdvertVerdict.TABLE_FULL, None
        entry = PeerEntry(
            peer_id=advert.peer_id,
            advert=advert,
            addrs=advert.addrs,
            received_at=now,
            expires_at=min(advert.expires_at, now + self.limits.max_ttl),
            envelope=data,
        )
        return AdvertVerdict.ACCEPTED, entry

    def _bucket(self, source: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.limits.max_buckets:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = TokenBucket(self.limits.rate, self.limits.burst, now)
            self._buckets[source] = bucket
        return bucket

    # ------------------------------------------------------------ queries
    def get(self, peer_id: str, now: float) -> PeerEntry | None:
        entry = self._entries.get(peer_id)
        if entry is None or entry.expires_at <= now:
            return None
        return entry

    def entries(self, now: float) -> list[PeerEntry]:
        return [e for e in self._entries.values() if e.expires_at > now]

    def peer_ids(self, now: float) -> set[str]:
        return {e.peer_id for e in self.entries(now)}

    def envelopes(self, now: float, limit: int, exclude: Iterable[str] = ()) -> list[bytes]:
        """The freshest stored envelopes, newest first (for a direct sync)."""
        skip = set(exclude)
        live = [e for e in self.entries(now) if e.peer_id not in skip]
        live.sort(key=lambda e: e.received_at, reverse=True)
        return [e.envelope for e in live[:limit]]

    def expire(self, now: float) -> list[str]:
        """Remove expired entries; return their peer IDs."""
        gone = [pid for pid, e in self._entries.items() if e.expires_at <= now]
        for pid in gone:
            del self._entries[pid]
        return gone

    def next_expiry(self) -> float | None:
        return min((e.expires_at for e in self._entries.values()), default=None)

    def candidates(
        self, spec: JobSpec, now: float, exclude: Iterable[str] = (),
        trust: Callable[[str], Trust] | None = None,
    ) -> list[PeerEntry]:
        """The live entries whose advert can run ``spec``, best first (see market.rank);
        ``trust`` gives each provider's reputation terms (none: price alone)."""
        skip = set(exclude)
        fitting = [
            e for e in self.entries(now) if e.peer_id not in skip and market.fits(spec, e.advert)
        ]
        if trust is None:
            return sorted(fitting, key=lambda e: market.rank_key(spec, e.advert))
        return sorted(fitting, key=lambda e: market.rank_key(spec, e.advert, trust(e.peer_id)))

    def snapshot(self, now: float) -> list[dict[str, Value]]:
        """Plain values for ``peerd peers``, sorted by peer ID."""
        return [_describe(e, now) for e in sorted(self.entries(now), key=lambda e: e.peer_id)]

    def __len__(self) -> int:
        return len(self._entries)


def _describe(entry: PeerEntry, now: float) -> dict[str, Value]:
    ad = entry.advert
    return {
        "peer_id": entry.peer_id,
        "role": ad.role.value,
        "addrs": list(entry.addrs),
        "version": ad.version,
        "seq": ad.seq,
        "cpus": ad.cpus,
        "free_cpus": ad.free_cpus,
        "memory": ad.memory,
        "free_memory": ad.free_memory,
        "gpus": [{"uuid": g.uuid, "model": g.model, "memory": g.memory} for g in ad.gpus],
        "free_gpus": len(ad.free_gpus),
        "price_cpu_hour": ad.price_cpu_hour,
        "price_gpu_hour": ad.price_gpu_hour,
        "docker": ad.docker,
        "gpu_runtime": ad.gpu_runtime,
        "network": ad.network,
        "max_timeout": ad.max_timeout,
        "queue_depth": ad.queue_depth,
        "running": ad.running,
        "draining": ad.draining,
        "age": round(max(0.0, now - entry.received_at), 3),
        "expires_in": round(max(0.0, entry.expires_at - now), 3),
    }
