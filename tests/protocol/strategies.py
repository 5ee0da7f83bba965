"""Hypothesis strategies that generate valid instances of every wire message."""

from __future__ import annotations

import base64

from hypothesis import strategies as st

from protocol import messages as m
from protocol.jobspec import reserved_env
from protocol.messages import (
    MAX_COUNT,
    MAX_CPUS,
    MAX_GPUS,
    MAX_MEMORY,
    MAX_PRICE,
    MAX_TIMEOUT,
    MAX_TIMESTAMP,
)

from .helpers import other_signer, provider_signer, requester_signer

PEERS = [requester_signer().peer_id, provider_signer().peer_id, other_signer().peer_id]


def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size)


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


task_ids = text(64, 1)
peer_ids = st.sampled_from(PEERS)
timestamps = floats(0, MAX_TIMESTAMP)
prices = floats(0, MAX_PRICE)
counts = st.integers(0, MAX_COUNT)
memories = st.integers(0, MAX_MEMORY)
digests = text(128)
exit_codes = st.none() | st.integers(-(1 << 31), (1 << 31) - 1)
small_bytes = st.binary(max_size=256)

gpu_offers = st.builds(
    m.GpuOffer, uuid=text(128, 1), model=text(128), memory=memories, compute_capability=text(16)
)


@st.composite
def adverts(draw: st.DrawFn) -> m.Advert:
    gpus = draw(st.lists(gpu_offers, max_size=4, unique_by=lambda g: g.uuid))
    free = draw(st.lists(st.sampled_from([g.uuid for g in gpus]), unique=True)) if gpus else []
    cpus = draw(floats(0, MAX_CPUS))
    memory = draw(memories)
    issued = draw(floats(0, MAX_TIMESTAMP / 2))
    return m.Advert(
        peer_id=draw(peer_ids), seq=draw(counts), issued_at=issued,
        expires_at=draw(floats(issued, MAX_TIMESTAMP)), role=draw(st.sampled_from(m.NodeRole)),
        addrs=tuple(draw(st.lists(text(64), max_size=4))), version=draw(text(64)),
        cpus=cpus, memory=memory, disk=draw(memories), gpus=tuple(gpus),
        free_cpus=draw(floats(0, cpus)), free_memory=draw(st.integers(0, memory)),
        free_gpus=tuple(free), queue_depth=draw(counts), running=draw(counts),
        price_cpu_hour=draw(prices), price_gpu_hour=draw(prices), docker=draw(st.booleans()),
        gpu_runtime=draw(st.booleans()), network=draw(st.booleans()),
        max_timeout=draw(floats(0, MAX_TIMEOUT)), draining=draw(st.booleans()),
        gang=draw(st.booleans()), images=draw(st.booleans()),
    )


env_names = text(32, 1).filter(lambda k: "=" not in k and "\0" not in k and not reserved_env(k))

input_dest_parts = st.text(st.characters(min_codepoint=0x30, max_codepoint=0x7A, exclude_characters="/"),
                           min_size=1, max_size=8)
input_refs = st.builds(
    m.InputRef,
    manifest=st.binary(min_size=32, max_size=32).map(lambda d: "sha256:" + d.hex()),
    dest=st.lists(input_dest_parts, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    size=st.integers(0, 1 << 40),
    file=st.booleans(),
)

wg_keys = st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(raw).decode())
endpoints = st.tuples(st.sampled_from(["127.0.0.1", "203.0.113.5", "[::1]", "host.example"]),
                      st.integers(1, 65535)).map(lambda hp: f"{hp[0]}:{hp[1]}")
overlay_endpoints = st.builds(m.OverlayEndpoint, public_key=wg_keys, endpoint=endpoints)
gang_refs = st.integers(2, m.MAX_NODES).flatmap(
    lambda size: st.builds(m.GangRef, gang_id=text(64, 1), size=st.just(size), rank=st.integers(0, size - 1))
)


@st.composite
def rosters(draw: st.DrawFn, size: int | None = None) -> tuple[m.RosterMember, ...]:
    n = size if size is not None else draw(st.integers(2, 4))
    peers = draw(st.lists(text(128, 1), min_size=n, max_size=n, unique=True))
    keys = draw(st.lists(wg_keys, min_size=n, max_size=n, unique=True))
    return tuple(
        m.RosterMember(rank=i, peer=peers[i], public_key=keys[i], endpoint=draw(endpoints)) for i in range(n)
    )


roster_members = st.builds(m.RosterMember, rank=st.integers(0, m.MAX_NODES - 1), peer=text(128, 1),
                           public_key=wg_keys, endpoint=endpoints)

image_contents = st.builds(
    m.ImageContent,
    id=st.binary(min_size=32, max_size=32).map(lambda d: "sha256:" + d.hex()),
    manifest=st.binary(min_size=32, max_size=32).map(lambda d: "sha256:" + d.hex()),
    size=st.integers(0, 1 << 40),
)

job_specs = st.builds(
    m.JobSpec,
    image=text(256, 1),
    command=st.lists(text(64), max_size=8).map(tuple),
    env=st.dictionaries(env_names, text(64), max_size=4),
    cpus=floats(0.001, MAX_CPUS),
    memory=st.integers(4 << 20, MAX_MEMORY),
    gpus=st.integers(0, MAX_GPUS),
    gpu_memory=memories,
    gpu_model=text(128),
    timeout=floats(0.001, MAX_TIMEOUT),
    network=st.booleans(),
    max_price=prices,
    inputs=st.lists(input_refs, max_size=2, unique_by=lambda r: r.dest.split("/")[1]).map(tuple),
    nodes=st.just(1) | st.integers(2, 4),
    image_content=st.none() | image_contents,
)

gpu_uuids = st.lists(text(64, 1), max_size=4).map(tuple)



@st.composite
def _task_requests(draw: st.DrawFn) -> m.TaskRequest:
    spec = draw(job_specs)
    gang = None if spec.nodes == 1 else m.GangRef(
        gang_id=draw(text(64, 1)), size=spec.nodes, rank=draw(st.integers(0, spec.nodes - 1)))
    return m.TaskRequest(task_id=draw(task_ids), requester=draw(peer_ids), spec=spec, sent_at=draw(timestamps),
                         gang=gang)


task_requests = _task_requests()
offers = st.builds(
    m.Offer, task_id=task_ids, price=prices, expires_at=timestamps, cpus=floats(0, MAX_CPUS),
    memory=memories, gpus=gpu_uuids, overlay=st.none() | overlay_endpoints,
)
rejects = st.builds(m.Reject, task_id=task_ids, code=st.sampled_from(m.RejectCode), detail=text(1024))
accepts = st.builds(m.Accept, task_id=task_ids, price=prices, roster=st.just(()) | rosters())


@st.composite
def _lease_terms(draw: st.DrawFn) -> m.LeaseTerms:
    spec = draw(job_specs)
    provider = draw(peer_ids)
    gang, roster = None, ()
    if spec.nodes > 1:
        gang = m.GangRef(gang_id=draw(text(64, 1)), size=spec.nodes, rank=draw(st.integers(0, spec.nodes - 1)))
        drawn = draw(rosters(spec.nodes))
        roster = tuple(
            m.RosterMember(rank=r.rank, peer=provider if r.rank == gang.rank else f"{r.peer}-{r.rank}",
                           public_key=r.public_key, endpoint=r.endpoint)
            for r in drawn
        )
    return m.LeaseTerms(
        task_id=draw(task_ids), requester=draw(peer_ids), provider=provider, spec=spec, price=draw(prices),
        gpus=draw(gpu_uuids), issued_at=draw(timestamps), expires_at=draw(timestamps), gang=gang, roster=roster,
    )


lease_terms = _lease_terms()

receipt_terms = st.builds(
    m.ReceiptTerms, task_id=task_ids, requester=peer_ids, provider=peer_ids, lease_digest=digests,
    state=st.sampled_from(m.TaskState), exit_code=exit_codes, stdout_digest=digests,
    stderr_digest=digests, output_digest=digests, output_size=memories,
    wall_time=floats(0, MAX_TIMEOUT * 2), gpu_seconds=floats(0, MAX_TIMEOUT * 2 * MAX_GPUS),
    price=prices, cost=floats(0, MAX_PRICE * MAX_TIMEOUT), finished_at=timestamps,
    staging_time=floats(0, MAX_TIMEOUT * 2),
)
signatures = st.just(b"") | st.binary(min_size=64, max_size=64)
leases = st.builds(m.Lease, terms=small_bytes, provider_sig=signatures, requester_sig=signatures)
receipts = st.builds(m.Receipt, terms=small_bytes, provider_sig=signatures, requester_sig=signatures)
statuses = st.builds(
    m.Status, task_id=task_ids, state=st.sampled_from(m.TaskState), detail=text(1024), at=timestamps
)
log_chunks = st.builds(
    m.LogChunk, task_id=task_ids, stream=st.sampled_from(m.LogStream), seq=counts,
    data=st.binary(max_size=1024),
)
results = st.builds(
    m.Result, task_id=task_ids, state=st.sampled_from(m.TaskState), exit_code=exit_codes,
    stdout=small_bytes, stderr=small_bytes, output_digest=digests, output_size=memories,
    wall_time=floats(0, MAX_TIMEOUT * 2), gpu_seconds=floats(0, MAX_TIMEOUT * 2 * MAX_GPUS),
    detail=text(1024),
)
cancels = st.builds(m.Cancel, task_id=task_ids, reason=text(1024))
resumes = st.builds(m.Resume, task_id=task_ids, lease_digest=text(128, 1), log_seq=counts)
envelopes = st.builds(m.Envelope, payload=small_bytes, signer=peer_ids, sig=st.binary(min_size=64, max_size=64))

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | floats(-1e300, 1e300) | text(64) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text(16), children, max_size=4),
    max_leaves=12,
)
control_requests = st.builds(
    m.ControlRequest, id=counts, command=text(64, 1), args=st.dictionaries(text(16), values, max_size=4)
)
control_errors = st.builds(m.ControlError, code=text(64, 1), message=text(256))
control_responses = st.builds(
    m.ControlResponse, id=counts, result=values, error=st.none() | control_errors, more=st.booleans()
)

# One strategy per top-level message type; a test checks none is missing.
BY_TYPE: dict[str, st.SearchStrategy[m.Message]] = {
    m.Advert.TYPE: adverts(),
    m.TaskRequest.TYPE: task_requests,
    m.Offer.TYPE: offers,
    m.Reject.TYPE: rejects,
    m.Accept.TYPE: accepts,
    m.LeaseTerms.TYPE: lease_terms,
    m.Lease.TYPE: leases,
    m.Status.TYPE: statuses,
    m.LogChunk.TYPE: log_chunks,
    m.Result.TYPE: results,
    m.ReceiptTerms.TYPE: receipt_terms,
    m.Receipt.TYPE: receipts,
    m.Cancel.TYPE: cancels,
    m.Resume.TYPE: resumes,
    m.Envelope.TYPE: envelopes,
    m.ControlRequest.TYPE: control_requests,
    m.ControlResponse.TYPE: control_responses,
}

messages = st.one_of(*BY_TYPE.values())
