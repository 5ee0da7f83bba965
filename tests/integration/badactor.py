"""A misbehaving peerd node, run as a process: ``python -m tests.integration.badactor``.

It is a real libp2p node (``peerd.p2p.host.open_node``: Noise, yamux,
gossipsub, Kad-DHT) with one identity. It joins through the seeds it is given
and publishes the advert of the most attractive provider there is (64 CPUs,
free of charge), so honest requesters try it first. Then it misbehaves:

    --flood N        publishes N validly signed adverts back to back (each with
                     a new seq): honest nodes count them ``rate_limited``
    --attacks        every round also publishes a forged advert (payload
                     swapped under the signature: ``bad_signature``), a replay
                     of an older advert of its own (``replayed``) and an advert
                     signed by another key (``wrong_source``)
    --lease hang     speaks /peerd/task/1.0.0 well enough to get a co-signed
                     lease, then never runs the job: no status, no result (and
                     silence on Resume)
    --lease wrong-digest
                     gets the lease, then returns a Result whose receipt's
                     stdout digest does not match it (and Reject on Resume)
    --lease wrong-output
                     gets the lease, then returns a plausible but wrong result
                     (another output manifest id and stdout, exit 0) with a
                     matching receipt, as if it had run the job
    --squat N        a requester instead: publishes no advert, and for every
                     provider whose advert it hears keeps N streams asking for
                     that provider's whole capacity at the maximum price,
                     never accepting, asking again as soon as an offer expires
                     or a request is refused (what it got goes to "squat")

What it did goes to ``--state FILE`` (JSON, replaced atomically after every
change): its peer ID and addresses, what it sent and the task IDs it leased.
It runs until SIGTERM/SIGINT. Tests start one with ``bad_actor(...)``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from libp2p.custom_types import TProtocol
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from libp2p.utils.address_validation import expand_wildcard_address

from peerd.jobs.taskwire import PeerGone, PeerTimeout, TaskChannel
from peerd.p2p.adverts import ADVERT_TOPIC
from peerd.p2p.dialing import connect, open_stream, split_p2p
from peerd.p2p.errors import StreamError
from peerd.p2p.host import Libp2pNode, open_node
from peerd.p2p.streams import Stream, guard_handler
from protocol import ProtocolError
from protocol.codec import decode_as, encode
from protocol.messages import (
    MAX_PRICE,
    Accept,
    Advert,
    Envelope,
    JobSpec,
    Lease,
    NodeRole,
    Offer,
    Reject,
    RejectCode,
    Result,
    Resume,
    Status,
    TaskRequest,
    TaskState,
)
from protocol.negotiation import (
    TASK_PROTOCOL,
    ProviderNegotiation,
    RequesterNegotiation,
)
from protocol.signing import AdvertCheck, Signer, open_advert, seal_bytes
from tests.waiting import eventually

GIB = 1 << 30
IO_TIMEOUT = 30.0
ADVERT_TTL = 30.0
ROUND = 1.5  # seconds between two rounds: one advert and at most one attack (peers allow 2/s)
SILENCE = 3600.0
LEASE_MODES = ("hang", "wrong-digest", "wrong-output")


def attractive_advert(signer: Signer, seq: int, addrs: tuple[str, ...], now: float) -> Advert:
    """The best offer on the network: many CPUs, lots of memory, free."""
    return Advert(
        peer_id=signer.peer_id, seq=seq, issued_at=now, expires_at=now + ADVERT_TTL,
        role=NodeRole.PROVIDER, addrs=addrs, version="0.1.0", cpus=64.0, memory=256 * GIB,
        disk=1024 * GIB, gpus=(), free_cpus=64.0, free_memory=256 * GIB, free_gpus=(),
        queue_depth=0, running=0, price_cpu_hour=0.0, price_gpu_hour=0.0, docker=True,
        gpu_runtime=False, network=True, max_timeout=24 * 3600.0, draining=False,
        images=True,  # a squatter or liar claims to take anything: a locally built image is carried to it too
    )


class BadActor:
    def __init__(self, signer: Signer, lease_mode: str, state_path: Path) -> None:
        self.signer = signer
        self.lease_mode = lease_mode
        self.state_path = state_path
        self.stranger = Signer.generate()
        self.seq = int(time.time() * 1000)
        self.addrs: tuple[str, ...] = ()
        self.sent = {"adverts": 0, "flood": 0, "forged": 0, "replayed": 0, "misbound": 0}
        self.leased: list[str] = []
        self.resumes = 0
        self.published: list[bytes] = []  # our own adverts, oldest first (for replays)
        self.squat: dict[str, object] = {"offers": 0, "rejects": {}, "holding": {}, "errors": 0}

    # ------------------------------------------------------------ state file
    def save(self) -> None:
        state = {"peer_id": self.signer.peer_id, "stranger": self.stranger.peer_id, "addrs": list(self.addrs),
                 "sent": self.sent, "leased": self.leased, "resumes": self.resumes, "lease_mode": self.lease_mode,
                 "squat": self.squat}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    # ------------------------------------------------------------ adverts
    def advert(self) -> bytes:
        self.seq += 1
        return seal_bytes(attractive_advert(self.signer, self.seq, self.addrs, time.time()), self.signer)

    def forged(self) -> bytes:
        """Our envelope and signature around another advert's payload."""
        env = decode_as(self.advert(), Envelope)
        other = decode_as(self.advert(), Envelope)
        assert isinstance(env, Envelope) and isinstance(other, Envelope)
        return encode(dataclasses.replace(env, payload=other.payload))

    def misbound(self) -> bytes:
        """A valid advert of another key, published by us."""
        ad = attractive_advert(self.stranger, self.seq, self.addrs, time.time())
        return seal_bytes(ad, self.stranger)

    async def publish(self, node: Libp2pNode, data: bytes, kind: str) -> None:
        await node.pubsub.publish(ADVERT_TOPIC, data)
        self.sent[kind] += 1
        if kind in ("adverts", "flood"):
            self.published = [*self.published[-4:], data]

    async def advertise(self, node: Libp2pNode, flood: int, attacks: bool) -> None:
        await self.publish(node, self.advert(), "adverts")
        for _ in range(flood):
            await self.publish(node, self.advert(), "flood")
        self.save()
        kinds = ("forged", "replayed", "misbound")
        for round_no in itertools.count():
            await trio.sleep(ROUND)
            await self.publish(node, self.advert(), "adverts")
            if attacks:
                kind = kinds[round_no % len(kinds)]
                await self.publish(node, self.attack(kind), kind)
            self.save()

    def attack(self, kind: str) -> bytes:
        if kind == "forged":
            return self.forged()
        if kind == "replayed":  # older than the newest one peers hold
            return self.published[-3]
        return self.misbound()

    # ------------------------------------------------------------ tasks
    async def serve_task(self, stream: Stream) -> None:
        machine = ProviderNegotiation(self.signer, stream.remote_peer)
        channel = TaskChannel(stream, machine, timeout=IO_TIMEOUT)
        try:
            first = await channel.receive()
            if isinstance(first, Resume):
                self.resumes += 1
                self.save()
                await self._answer_resume(channel, first)
            elif isinstance(first, TaskRequest):
                await self._lease_then_misbehave(channel, first)
        except (PeerGone, PeerTimeout, ProtocolError, StreamError) as exc:
            print(f"badactor: task stream from {stream.remote_peer[-8:]} ended: {exc}", file=sys.stderr)

    async def _answer_resume(self, channel: TaskChannel, resume: Resume) -> None:
        if self.lease_mode == "hang":
            await _silence(channel)
        else:
            assert isinstance(channel.machine, ProviderNegotiation)
            await channel.send_frame(channel.machine.reject(RejectCode.UNKNOWN_TASK, "no such lease here"))

    async def _lease_then_misbehave(self, channel: TaskChannel, request: TaskRequest) -> None:
        machine = channel.machine
        assert isinstance(machine, ProviderNegotiation)
        spec, now = request.spec, time.time()
        await channel.send(Offer(task_id=request.task_id, price=0.0, expires_at=now + 30,
                                 cpus=spec.cpus, memory=spec.memory, gpus=()))
        accept = await channel.receive()
        if not isinstance(accept, Accept):
            return
        terms = machine.draft_lease(issued_at=time.time(), expires_at=time.time() + spec.timeout + 60)
        await channel.send_frame(machine.propose_lease(terms))
        if not isinstance(await channel.receive(), Lease):
            return
        self.leased.append(request.task_id)
        self.save()
        if self.lease_mode == "hang":
            await _silence(channel)
        elif self.lease_mode == "wrong-output":
            await self._wrong_output(channel, request)
        else:
            await self._wrong_digest(channel, request)

    async def _wrong_digest(self, channel: TaskChannel, request: TaskRequest) -> None:
        machine = channel.machine
        assert isinstance(machine, ProviderNegotiation)
        task_id = request.task_id
        await channel.send(Status(task_id=task_id, state=TaskState.RUNNING, detail="leased", at=time.time()))
        result = Result(task_id=task_id, state=TaskState.SUCCEEDED, exit_code=0, stdout=b"forged output\n",
                        stderr=b"", output_digest="", output_size=0, wall_time=0.5, gpu_seconds=0.0, detail="")
        await channel.send(result)
        genuine = "sha256:" + hashlib.sha256(b"what really ran\n").hexdigest()  # not result.stdout's digest
        empty = "sha256:" + hashlib.sha256(b"").hexdigest()
        terms = machine.draft_receipt(stdout_digest=genuine, stderr_digest=empty, cost=0.0, finished_at=time.time())
        await channel.send_frame(machine.propose_receipt(terms))
        await _silence(channel)


    async def _wrong_output(self, channel: TaskChannel, request: TaskRequest) -> None:
        """A plausible lie: a well-formed result and a matching co-signable receipt, for output that
        was never computed (another output manifest id and stdout than the job's)."""
        machine = channel.machine
        assert isinstance(machine, ProviderNegotiation)
        task_id = request.task_id
        await channel.send(Status(task_id=task_id, state=TaskState.RUNNING, detail="leased", at=time.time()))
        stdout = b"forged output\n"
        forged_manifest = "sha256:" + hashlib.sha256(b"forged manifest " + task_id.encode()).hexdigest()
        result = Result(task_id=task_id, state=TaskState.SUCCEEDED, exit_code=0, stdout=stdout, stderr=b"",
                        output_digest=forged_manifest, output_size=0, wall_time=0.5, gpu_seconds=0.0, detail="")
        await channel.send(result)
        terms = machine.draft_receipt(stdout_digest="sha256:" + hashlib.sha256(stdout).hexdigest(),
                                      stderr_digest="sha256:" + hashlib.sha256(b"").hexdigest(),
                                      cost=0.0, finished_at=time.time())
        await channel.send_frame(machine.propose_receipt(terms))
        with contextlib.suppress(PeerGone, PeerTimeout, ProtocolError, StreamError):
            await channel.receive()  # the requester's countersignature
        self.sent["wrong_output"] = self.sent.get("wrong_output", 0) + 1
        self.save()


class Squatter:
    """Asks providers for everything they have and never accepts (``--squat``)."""

    def __init__(self, actor: BadActor, node: Libp2pNode, streams: int) -> None:
        self.actor, self.node, self.streams = actor, node, streams
        self.targets: set[str] = set()

    async def watch(self, subscription: TrioSubscriptionAPI) -> None:
        async with trio.open_nursery() as nursery:
            async for msg in subscription:
                try:
                    advert = open_advert(bytes(msg.data), source_peer=None, check=AdvertCheck(now=time.time()))
                except ProtocolError:
                    continue
                if advert.role is NodeRole.PROVIDER and advert.peer_id not in self.targets:
                    self.targets.add(advert.peer_id)
                    for _ in range(self.streams):
                        nursery.start_soon(self.squat_on, advert)

    async def squat_on(self, advert: Advert) -> None:
        while True:
            try:
                await self.ask_once(advert)
            except (PeerGone, PeerTimeout, ProtocolError, StreamError) as exc:
                self.count("errors")
                print(f"badactor: squat on {advert.peer_id[-8:]}: {exc}", file=sys.stderr)
                await trio.sleep(0.5)

    async def ask_once(self, advert: Advert) -> None:
        stream = await open_stream(self.node, advert.peer_id, TASK_PROTOCOL, advert.addrs,
                                   connect_timeout=10.0, io_timeout=IO_TIMEOUT)
        channel = TaskChannel(stream, RequesterNegotiation(self.actor.signer, advert.peer_id), timeout=IO_TIMEOUT)
        spec = JobSpec(image="peerd-test/busybox:1", command=("sleep", "600"), cpus=advert.cpus,
                       memory=advert.memory, timeout=600.0, max_price=MAX_PRICE)
        task_id = f"squat-{os.urandom(6).hex()}"
        try:
            await channel.send(TaskRequest(task_id=task_id, requester=self.actor.signer.peer_id, spec=spec,
                                           sent_at=time.time()))
            answer = await channel.receive()
            if isinstance(answer, Reject):
                rejects = self.squat_dict("rejects")
                rejects[answer.code.value] = rejects.get(answer.code.value, 0) + 1
                self.actor.save()
                await trio.sleep(0.2)  # and ask again
                return
            assert isinstance(answer, Offer)
            self.count("offers")
            await self.hold(channel, advert.peer_id, answer.expires_at)
        finally:
            await channel.close()

    async def hold(self, channel: TaskChannel, provider: str, expires_at: float) -> None:
        """Keep the offer open, unanswered, until it expires (or the provider gives up on it)."""
        holding = self.squat_dict("holding")
        holding[provider] = holding.get(provider, 0) + 1
        self.actor.save()
        try:
            with trio.move_on_after(max(expires_at - time.time(), 0.0) + 1.0):
                await channel.receive(timeout=SILENCE)
        except (PeerGone, PeerTimeout):
            pass
        finally:
            holding[provider] -= 1
            self.actor.save()

    def squat_dict(self, key: str) -> dict[str, int]:
        value = self.actor.squat[key]
        assert isinstance(value, dict)
        return value

    def count(self, key: str) -> None:
        value = self.actor.squat[key]
        assert isinstance(value, int)
        self.actor.squat[key] = value + 1
        self.actor.save()


async def _silence(channel: TaskChannel) -> None:
    """Say nothing; read until the requester gives up and closes or resets."""
    stream = channel.stream
    assert isinstance(stream, Stream)
    while await stream.read(64 << 10, timeout=SILENCE):
        pass


async def _drain(subscription: TrioSubscriptionAPI) -> None:
    """We read no adverts; empty the channel so the library never complains it is full."""
    async for _ in subscription:
        pass


def listen_addrs(node: Libp2pNode, peer_id: str) -> tuple[str, ...]:
    out = [f"{concrete}/p2p/{peer_id}" for addr in node.host.get_transport_addrs()
           for concrete in expand_wildcard_address(addr)]
    return tuple(sorted(set(out)))


async def main(args: argparse.Namespace) -> None:
    signer = Signer.generate()
    actor = BadActor(signer, args.lease, Path(args.state))
    async with open_node(signer, [args.listen], topics=frozenset({ADVERT_TOPIC})) as node:
        node.host.set_stream_handler(TProtocol(TASK_PROTOCOL), guard_handler(actor.serve_task, io_timeout=IO_TIMEOUT))
        subscription = await node.pubsub.subscribe(ADVERT_TOPIC)
        actor.addrs = listen_addrs(node, signer.peer_id)
        for seed in args.bootstrap:
            _, seed_id = split_p2p(seed)
            assert seed_id is not None, f"seed address without /p2p/: {seed}"
            await connect(node, seed_id, [seed], timeout=10.0)
        # publish only once a mesh peer will carry it
        await eventually("a gossip mesh peer", lambda: node.gossipsub.mesh.get(ADVERT_TOPIC), timeout=20)
        actor.save()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if args.squat:
                    nursery.start_soon(Squatter(actor, node, args.squat).watch, subscription)
                else:
                    nursery.start_soon(actor.advertise, node, args.flood, args.attacks)
                    nursery.start_soon(_drain, subscription)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break


# ---------------------------------------------------------------- for tests: run one as a process
REPO = Path(__file__).resolve().parents[2]


@dataclass
class BadActorProcess:
    proc: subprocess.Popen[bytes]
    state_path: Path
    log_path: Path

    def state(self) -> dict[str, object] | None:
        """What the bad actor reported so far (None before it joined)."""
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return None

    @property
    def peer_id(self) -> str:
        state = self.state()
        assert state is not None, "the bad actor has not started"
        return str(state["peer_id"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def bad_actor(
    workdir: Path, bootstrap: Sequence[str], *, lease: str = "hang", flood: int = 0, attacks: bool = False,
    listen: str = "/ip4/127.0.0.1/tcp/0", prefix: Sequence[str] = (), timeout: float = 30.0, squat: int = 0,
) -> Iterator[BadActorProcess]:
    """Start a bad actor (``prefix``: e.g. ``ip netns exec NS``); wait until it joined; stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "badactor.log"
    args = [*prefix, sys.executable, "-m", "tests.integration.badactor", "--listen", listen, "--lease", lease,
            "--flood", str(flood), "--squat", str(squat), "--state", str(workdir / "state.json")]
    args += [f"--bootstrap={seed}" for seed in bootstrap] + (["--attacks"] if attacks else [])
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    actor = BadActorProcess(proc, workdir / "state.json", log_path)
    try:
        deadline = time.monotonic() + timeout
        while actor.state() is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bad actor did not start (exit {proc.poll()}):\n{actor.log_tail()}")
            time.sleep(0.1)  # polling an external process's state file
        yield actor
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="badactor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--bootstrap", action="append", default=[], required=True)
    parser.add_argument("--lease", choices=LEASE_MODES, default="hang")
    parser.add_argument("--flood", type=int, default=0)
    parser.add_argument("--attacks", action="store_true")
    parser.add_argument("--squat", type=int, default=0, metavar="N",
                        help="squat on every provider heard of with N streams (and publish no advert)")
    parser.add_argument("--state", required=True, help="JSON file describing what was done")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse(sys.argv[1:]))
