"""Control-socket connections: hello first, ids matched, bad input refused."""

from __future__ import annotations

import pytest

from protocol import codec, control
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import ControlRequest, ControlResponse


def connected() -> tuple[control.ControlClientConnection, control.ControlServerConnection]:
    client, server = control.ControlClientConnection("peerd-cli/0.1"), control.ControlServerConnection()
    server.receive_data(client.hello())
    hello = server.next_request()
    assert isinstance(hello, ControlRequest) and hello.command == control.HELLO
    assert server.client == "peerd-cli/0.1"
    client.receive_data(server.send(control.hello_ok(hello.id, "peerd 0.1.0")))
    answer = client.next_response()
    assert isinstance(answer, ControlResponse) and answer.error is None
    assert answer.result == {"version": control.CONTROL_VERSION, "daemon": "peerd 0.1.0"}
    return client, server


def test_request_response_and_streaming() -> None:
    client, server = connected()
    req_id, data = client.request("status", {"verbose": True})
    server.receive_data(data)
    req = server.next_request()
    assert req == ControlRequest(id=req_id, command="status", args={"verbose": True})
    assert server.next_request() is control.NEED_DATA
    client.receive_data(server.send(control.ok(req_id, {"n": 1}, more=True)))
    client.receive_data(server.send(control.ok(req_id, {"n": 2})))
    first, last = client.next_response(), client.next_response()
    assert isinstance(first, ControlResponse) and first.more and client.pending == frozenset()
    assert isinstance(last, ControlResponse) and last.result == {"n": 2}
    assert client.next_response() is control.NEED_DATA
    server.receive_data(b"")
    assert server.next_request() is control.CLOSED


def test_error_response_ends_a_request() -> None:
    client, server = connected()
    req_id, data = client.request("nope")
    client.receive_data(server.send(control.fail(req_id, control.UNKNOWN_COMMAND, "no such command")))
    resp = client.next_response()
    assert isinstance(resp, ControlResponse) and resp.error is not None
    assert resp.error.code == control.UNKNOWN_COMMAND and req_id not in client.pending


def test_unknown_response_id_is_a_protocol_error() -> None:
    client, _ = connected()
    client.receive_data(codec.encode_frame(control.ok(99, None)))
    with pytest.raises(RemoteProtocolError, match="unknown request id 99"):
        client.next_response()


def test_request_before_hello_is_refused() -> None:
    server = control.ControlServerConnection()
    server.receive_data(codec.encode_frame(control.request(5, "status")))
    with pytest.raises(control.ControlRefused) as info:
        server.next_request()
    assert info.value.response.id == 5
    assert info.value.response.error is not None
    assert info.value.response.error.code == control.HELLO_REQUIRED
    with pytest.raises(control.ControlRefused):  # stays refused
        server.next_request()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"version": control.CONTROL_VERSION + 1, "client": "x"}, control.UNSUPPORTED_VERSION),
        ({"version": "1", "client": "x"}, control.UNSUPPORTED_VERSION),
        ({"client": "x"}, control.UNSUPPORTED_VERSION),
        ({"version": control.CONTROL_VERSION}, control.BAD_ARGS),
    ],
)
def test_bad_hello(args: dict[str, object], code: str) -> None:
    server = control.ControlServerConnection()
    server.receive_data(codec.encode_frame(control.request(0, control.HELLO, args)))  # type: ignore[arg-type]
    with pytest.raises(control.ControlRefused) as info:
        server.next_request()
    assert info.value.code == code
    assert info.value.response.error is not None and info.value.response.error.code == code


@pytest.mark.parametrize(
    "data",
    [
        codec.frame(b"\xc1"),
        codec.encode_frame(control.ok(0, None)),  # a response sent to the server
        (1 << 30).to_bytes(4, "big"),  # oversize header
    ],
)
def test_malformed_input_is_refused(data: bytes) -> None:
    server = control.ControlServerConnection()
    server.receive_data(data)
    with pytest.raises(control.ControlRefused) as info:
        server.next_request()
    assert info.value.code in (control.MALFORMED,)
    assert info.value.response.id == 0


def test_client_refusal_with_id_zero_is_delivered() -> None:
    client = control.ControlClientConnection("cli")
    client.hello()
    client.receive_data(codec.encode_frame(control.fail(0, control.UNSUPPORTED_VERSION, "old")))
    resp = client.next_response()
    assert isinstance(resp, ControlResponse) and resp.error is not None


def test_client_orders_hello_first() -> None:
    client = control.ControlClientConnection("cli")
    with pytest.raises(LocalProtocolError):
        client.request("status")
    client.hello()
    with pytest.raises(LocalProtocolError):
        client.hello()


def test_error_codes_are_distinct_strings() -> None:
    assert len(control.ERROR_CODES) == 7
    assert {control.UNKNOWN_COMMAND, control.BAD_ARGS, control.MALFORMED, control.UNSUPPORTED_VERSION,
            control.FAILED, control.UNAVAILABLE, control.HELLO_REQUIRED} == control.ERROR_CODES


def test_refusal_of_a_long_bad_frame_still_builds_its_response() -> None:
    # Found by scripts/fuzz: the decode error quoted the input and overflowed ControlError.message.
    server = control.ControlServerConnection()
    server.receive_data(codec.encode_frame(control.request(0, control.HELLO, {"version": "x" * 5000})))
    with pytest.raises(control.ControlRefused) as info:
        server.next_request()
    assert info.value.response.error is not None
    assert len(info.value.response.error.message) <= control.MAX_MESSAGE


def test_fail_cuts_long_messages() -> None:
    resp = control.fail(1, control.FAILED, "x" * 10_000)
    assert resp.error is not None and len(resp.error.message) == control.MAX_MESSAGE


def test_client_reports_an_oversize_response_header_on_next_response() -> None:
    client = control.ControlClientConnection("cli", max_frame=64)
    client.hello()
    client.receive_data((65).to_bytes(4, "big"))  # does not raise here
    with pytest.raises(RemoteProtocolError) as info:
        client.next_response()
    assert info.value.code == "frame_too_large"
