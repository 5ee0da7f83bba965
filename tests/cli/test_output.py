"""How the CLI prints costs: with their unit and never rounded to zero."""

from __future__ import annotations

import pytest

from peerd.cli import output


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1 / 3600 * 0.5, "0.000139 credits"),  # one second at 0.5 credits per hour
        (0, "0 credits"),
        (12.5, "12.50 credits"),
        (1234.5678, "1234.57 credits"),
        (1e-9, "0.00000000100 credits"),
        (None, "-"),
        (float("nan"), "-"),
        (True, "-"),
    ],
)
def test_cost_has_a_unit_and_three_significant_digits(value: object, text: str) -> None:
    assert output.cost(value) == text


def test_receipt_line_and_table_show_the_cost_with_its_unit() -> None:
    receipt = {"task_id": "t1", "state": "succeeded", "cost": 0.000139, "verified": True,
               "provider": "p", "requester": "r"}
    assert output.receipt_line(receipt).startswith("cost 0.000139 credits, succeeded")
    assert "0.000139 credits" in output.receipts_text([receipt])


def test_status_shows_reachability_and_peers_show_relayed_providers() -> None:
    from peerd.cli.output import peers_text, status_text

    circuit = "/ip4/10.77.0.1/tcp/4001/p2p/RELAY/p2p-circuit/p2p/ME"
    text = status_text({"peer_id": "ME", "reachability": {
        "reachability": "relayed", "relay_addrs": [circuit], "hint": "nothing to do", "relays_lost": 0}})
    assert "relayed" in text and circuit in text and "nothing to do" in text
    table = peers_text([{"peer_id": "ME", "addrs": [circuit], "advert": None}])
    assert "REACH" in table and "relayed" in table


@pytest.mark.parametrize(("queue", "text"), [
    ({"position": 3, "priority": 0, "queued_at": 1_000.0, "deadline": 4_600.0}, "queued (#3, 45s)"),
    ({"position": None, "priority": 0, "queued_at": 1_000.0, "deadline": 4_600.0}, "queued (trying, 45s)"),
    ({"position": 1, "priority": 0, "queued_at": None, "deadline": 4_600.0}, "queued (#1)"),
])
def test_a_queued_task_shows_its_place_and_how_long_it_waited(queue: dict[str, object], text: str) -> None:
    view = {"task_id": "t1", "state": "queued", "queue": queue}
    assert f"queued ({output.queue_note(view, now=1_045.0)})" == text
    assert output.queue_note({"task_id": "t1", "state": "running", "queue": queue}) == ""


def test_tasks_table_shows_the_queue_note_in_the_state_column() -> None:
    view = {"task_id": "t1", "state": "queued", "exit_code": None, "role": "requester", "provider": None,
            "created_at": 0, "spec": {"command": ["true"]}, "queue": {"position": 2, "queued_at": None}}
    assert "queued (#2)" in output.tasks_text([view])
