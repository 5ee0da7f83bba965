"""``peerd submit --nodes N`` and how a gang's ranks are shown."""

from __future__ import annotations

import pytest

from peerd.cli.context import UsageError
from peerd.cli.output import ranks_text, task_text
from peerd.cli.parser import build_parser
from peerd.cli.submit import build_spec
from protocol.messages import JobSpec


def spec_of(*argv: str) -> JobSpec:
    args = build_parser().parse_args(["submit", "--image", "busybox", *argv, "--", "true"])
    return build_spec(args, {})


def test_nodes_makes_a_gang_spec_and_one_node_stays_plain() -> None:
    assert spec_of("--nodes", "3", "--cpus", "2").nodes == 3
    plain = spec_of()
    assert plain.nodes == 1 and "nodes" not in plain.to_wire()


def test_nodes_must_be_a_positive_count() -> None:
    for bad in ("0", "65"):
        with pytest.raises(UsageError, match="--nodes"):
            spec_of("--nodes", bad)


def test_ranks_are_shown_one_row_each() -> None:
    ranks = [
        {"rank": 0, "task_id": "g-r0", "provider": "12D3KooWAAAAAAAAAAAAAAAAAAAA", "state": "cancelled",
         "exit_code": 143, "stdout": "", "stderr": "", "receipt": None},
        {"rank": 1, "task_id": "g-r1", "provider": "12D3KooWBBBBBBBBBBBBBBBBBBBB", "state": "lost",
         "exit_code": None, "stdout": "", "stderr": "", "receipt": None},
    ]
    text = ranks_text(ranks)
    lines = text.splitlines()
    assert lines[0] == "ranks:" and "RANK" in lines[1]
    assert "cancelled" in lines[2] and "143" in lines[2] and "g-r0" in lines[2]
    assert "lost" in lines[3] and "g-r1" in lines[3]
    view = {"task_id": "g", "state": "failed", "attempts": [], "ranks": ranks, "spec": {}}
    assert text in task_text(view)
