"""The dial-back wire format and reading reachability off an advert's addresses."""

from __future__ import annotations

import pytest

from protocol import dialback
from protocol.errors import DecodeError
from protocol.reachability import Reachability, of_addrs

CIRCUIT = "/ip4/10.77.0.1/tcp/4001/p2p/RELAY/p2p-circuit/p2p/ME"
DIRECT = "/ip4/10.77.0.5/tcp/4001/p2p/ME"


def test_request_round_trips_and_is_size_checked_before_use() -> None:
    data = dialback.encode_request([4001, 4001, 5000])
    assert dialback.request_size(data[:1]) == len(data) == 5
    assert dialback.decode_request(data) == [4001, 5000]
    for bad in (b"", b"\x00", b"\x05" + b"\x00\x01" * 5, b"\x01\x00\x00", data[:-1]):
        with pytest.raises(DecodeError):
            dialback.decode_request(bad)
    with pytest.raises(ValueError):
        dialback.encode_request([0])


def test_response_is_one_byte_zero_or_one() -> None:
    assert dialback.decode_response(dialback.REACHED) is True
    assert dialback.decode_response(dialback.NOT_REACHED) is False
    with pytest.raises(DecodeError):
        dialback.decode_response(b"\x02")


def test_an_advert_of_circuit_addresses_only_is_relayed() -> None:
    assert of_addrs([CIRCUIT]) is Reachability.RELAYED
    assert of_addrs([DIRECT, CIRCUIT]) is Reachability.PUBLIC
    assert of_addrs([]) is Reachability.UNREACHABLE
