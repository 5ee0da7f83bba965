"""Golden test vectors: fixed bytes another implementation must produce and accept.

Keys come from fixed seeds (Ed25519 signatures are deterministic), so every
byte below is reproducible. protocol/README.md refers to these vectors; if a
test here fails, the wire format changed: bump PROTOCOL_VERSION instead.
"""

from __future__ import annotations

import pytest

from protocol import codec, control, messages as m, signing

REQUESTER = signing.Signer.from_seed(bytes(range(32)))  # seed 00 01 .. 1f
PROVIDER = signing.Signer.from_seed(bytes(range(32, 64)))  # seed 20 21 .. 3f

REQUESTER_PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
REQUESTER_PEER_ID = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
PROVIDER_PEER_ID = "12D3KooWCd3eX8r5ihRvzK7P1yPq5aakaBJhG5GNj18YTztPhoCa"

SPEC = m.JobSpec(
    image="busybox:1", command=("echo", "hi"), cpus=1.0, memory=64 << 20, timeout=60.0, max_price=5.0
)
LEASE_TERMS = m.LeaseTerms(
    task_id="t1", requester=REQUESTER_PEER_ID, provider=PROVIDER_PEER_ID, spec=SPEC, price=2.5,
    gpus=("GPU-0",), issued_at=1700000001.0, expires_at=1700000661.0,
)
ADVERT = m.Advert(
    peer_id=PROVIDER_PEER_ID, seq=7, issued_at=1700000000.0, expires_at=1700000060.0,
    role=m.NodeRole.PROVIDER, addrs=("/ip4/127.0.0.1/tcp/4001",), version="0.1.0", cpus=8.0,
    memory=32 << 30, disk=100 << 30,
    gpus=(m.GpuOffer(uuid="GPU-0", model="NVIDIA H100", memory=80 << 30, compute_capability="9.0"),),
    free_cpus=8.0, free_memory=32 << 30, free_gpus=("GPU-0",), queue_depth=0, running=0,
    price_cpu_hour=0.5, price_gpu_hour=2.0, docker=True, gpu_runtime=True, network=False,
    max_timeout=3600.0, draining=False,
)

CANCEL = bytes.fromhex(
    "84a17601a174a663616e63656ca77461736b5f6964a27431a6726561736f6ea0"
)

CANCEL_FRAME = bytes.fromhex(
    "0000002084a17601a174a663616e63656ca77461736b5f6964a27431a6726561736f6ea0"
)

TASK_REQUEST = bytes.fromhex(
    "86a17601a174a772657175657374a77461736b5f6964a27431a9726571756573746572d934313244334b6f6f57413458"
    "6f70314a6154334d487877594d6b436570597376346950566f704d5877437a35694859644266655342a4737065638da5"
    "696d616765a962757379626f783a31a7636f6d6d616e6492a46563686fa26869a3656e7680a463707573cb3ff0000000"
    "000000a66d656d6f7279ce04000000a46770757300aa6770755f6d656d6f727900a96770755f6d6f64656ca0a774696d"
    "656f7574cb404e000000000000a76e6574776f726bc2a96d61785f7072696365cb4014000000000000a6696e70757473"
    "90ad696d6167655f636f6e74656e74c0a773656e745f6174cb41d954fc40000000"
)

SEALED_REJECT = bytes.fromhex(
    "85a17601a174a8656e76656c6f7065a77061796c6f6164c43485a17601a174a672656a656374a77461736b5f6964a274"
    "31a4636f6465a462757379a664657461696caa71756575652066756c6ca67369676e6572d934313244334b6f6f574364"
    "336558387235696852767a4b3750317950713561616b61424a684735474e6a313859547a7450686f4361a3736967c440"
    "4121ab5879dc2172e676899eb45c5cc969018109b0c815e5255cd96fa6c90fc2418bfa053ffe78d57c83fbe54642a281"
    "dc4646cebc7647ab82d6e9319d447807"
)

COSIGNED_LEASE = bytes.fromhex(
    "85a17601a174a56c65617365a57465726d73c501858aa17601a174ab6c656173655f7465726d73a77461736b5f6964a2"
    "7431a9726571756573746572d934313244334b6f6f574134586f70314a6154334d487877594d6b436570597376346950"
    "566f704d5877437a35694859644266655342a870726f7669646572d934313244334b6f6f574364336558387235696852"
    "767a4b3750317950713561616b61424a684735474e6a313859547a7450686f4361a4737065638da5696d616765a96275"
    "7379626f783a31a7636f6d6d616e6492a46563686fa26869a3656e7680a463707573cb3ff0000000000000a66d656d6f"
    "7279ce04000000a46770757300aa6770755f6d656d6f727900a96770755f6d6f64656ca0a774696d656f7574cb404e00"
    "0000000000a76e6574776f726bc2a96d61785f7072696365cb4014000000000000a6696e7075747390ad696d6167655f"
    "636f6e74656e74c0a57072696365cb4004000000000000a46770757391a54750552d30a96973737565645f6174cb41d9"
    "54fc40400000aa657870697265735f6174cb41d954fce5400000ac70726f76696465725f736967c4400cb1461acbdb46"
    "ef2338064ac96e3697cdf8246a45cdafac85c259b8b5c313e8c1d5c297cd63d39f52db252fe74b4bb6e953d4d6245fa5"
    "f288618ed3e9159207ad7265717565737465725f736967c4408939d87e82743bc353fd40e4af01d12551d77767936e0f"
    "682833f9e1da52a3287c662d130489500ae2bf51a5f631396c4bc2a948f48e92f92b5698ee7c73990b"
)

SEALED_ADVERT = bytes.fromhex(
    "85a17601a174a8656e76656c6f7065a77061796c6f6164c501efde001aa17601a174a6616476657274a7706565725f69"
    "64d934313244334b6f6f574364336558387235696852767a4b3750317950713561616b61424a684735474e6a31385954"
    "7a7450686f4361a373657107a96973737565645f6174cb41d954fc40000000aa657870697265735f6174cb41d954fc4f"
    "000000a4726f6c65a870726f7669646572a5616464727391b72f6970342f3132372e302e302e312f7463702f34303031"
    "a776657273696f6ea5302e312e30a463707573cb4020000000000000a66d656d6f7279cf0000000800000000a4646973"
    "6bcf0000001900000000a4677075739184a475756964a54750552d30a56d6f64656cab4e56494449412048313030a66d"
    "656d6f7279cf0000001400000000b2636f6d707574655f6361706162696c697479a3392e30a9667265655f63707573cb"
    "4020000000000000ab667265655f6d656d6f7279cf0000000800000000a9667265655f6770757391a54750552d30ab71"
    "756575655f646570746800a772756e6e696e6700ae70726963655f6370755f686f7572cb3fe0000000000000ae707269"
    "63655f6770755f686f7572cb4000000000000000a6646f636b6572c3ab6770755f72756e74696d65c3a76e6574776f72"
    "6bc2ab6d61785f74696d656f7574cb40ac200000000000a8647261696e696e67c2a6696d61676573c2a67369676e6572"
    "d934313244334b6f6f574364336558387235696852767a4b3750317950713561616b61424a684735474e6a313859547a"
    "7450686f4361a3736967c440d71b262dc653723eaacc71202585cbed29ad6257f020066a95025793653a6c7ddd678168"
    "be2b0c6c6d167af36b74f344b68ae07c5d801bf77583df80b5d19e05"
)

HELLO_FRAME = bytes.fromhex(
    "0000004485a17601a174ab63746c5f72657175657374a2696400a7636f6d6d616e64a568656c6c6fa46172677382a776"
    "657273696f6e01a6636c69656e74a970656572642d636c69"
)


def test_keys_and_peer_ids() -> None:
    assert REQUESTER.public_bytes.hex() == REQUESTER_PUBLIC_KEY
    assert REQUESTER.peer_id == REQUESTER_PEER_ID
    assert PROVIDER.peer_id == PROVIDER_PEER_ID


@pytest.mark.parametrize(
    ("golden", "msg"),
    [
        (CANCEL, m.Cancel(task_id="t1", reason="")),
        (TASK_REQUEST, m.TaskRequest(task_id="t1", requester=REQUESTER_PEER_ID, spec=SPEC, sent_at=1700000000.0)),
    ],
)
def test_plain_messages(golden: bytes, msg: m.Message) -> None:
    assert codec.encode(msg) == golden
    assert codec.decode(golden) == msg


def test_frame() -> None:
    assert CANCEL_FRAME == len(CANCEL).to_bytes(4, "big") + CANCEL
    assert codec.encode_frame(m.Cancel(task_id="t1", reason="")) == CANCEL_FRAME


def test_sealed_reject() -> None:
    reject = m.Reject(task_id="t1", code=m.RejectCode.BUSY, detail="queue full")
    assert signing.seal_bytes(reject, PROVIDER) == SEALED_REJECT
    env, msg = signing.open_envelope(SEALED_REJECT, expected_signer=PROVIDER_PEER_ID)
    assert msg == reject and env.payload == codec.encode(reject)


def test_cosigned_lease() -> None:
    proposed = signing.propose(LEASE_TERMS, m.Lease, PROVIDER, as_provider=True)
    lease = signing.countersign(proposed, REQUESTER, as_provider=False)
    assert codec.encode(lease) == COSIGNED_LEASE
    decoded = codec.decode_as(COSIGNED_LEASE, m.Lease)
    assert isinstance(decoded, m.Lease)
    assert signing.verify_cosigned(decoded, m.LeaseTerms) == LEASE_TERMS
    assert signing.digest(decoded.terms) == signing.digest(codec.encode(LEASE_TERMS))


def test_sealed_advert() -> None:
    assert signing.seal_bytes(ADVERT, PROVIDER) == SEALED_ADVERT
    check = signing.AdvertCheck(now=1700000030.0, last_seq=6)
    assert signing.open_advert(SEALED_ADVERT, source_peer=PROVIDER_PEER_ID, check=check) == ADVERT


def test_control_hello_frame() -> None:
    assert codec.encode_frame(control.hello(0, "peerd-cli")) == HELLO_FRAME
