"""Helpers for the operations tests: a devnet whose nodes take extra config, and probes.

Everything here drives real ``peerd run`` processes (``peerd.devnet``) and a
real dockerd; waits poll the external processes with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from peerd.devnet import DevNet, NodeProc, wait_for

IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
FINAL = ("succeeded", "failed", "timeout", "oom", "cancelled", "interrupted", "not_placed", "lost")


class OpsNet(DevNet):
    """A DevNet whose nodes get extra TOML sections (``extra[name]``) after the fast defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: dict[str, str] = {}

    def config_text(self, node: NodeProc) -> str:
        return super().config_text(node) + self.extra.get(node.name, "")

    def add_with(self, name: str, role: str, extra: str) -> NodeProc:
        self.extra[name] = extra
        return self.add(name, role)


@contextmanager
def provider_network(provider_extra: str = "", requester_extra: str = "") -> Iterator[OpsNet]:
    """seed + one provider + one requester, the requester holding the provider's advert."""
    with OpsNet() as net:
        net.add_seed()
        net.add_with("provider", "provider", provider_extra)
        net.add_with("requester", "requester", requester_extra)
        net.wait_adverts("requester", ["provider"])
        yield net


def cli_json(node: NodeProc, *args: str) -> dict[str, object]:
    """``peerd --json ARGS`` against ``node``, parsed (an AssertionError if it printed no JSON)."""
    out = node.peerd("--json", *args)
    try:
        view = json.loads(out.stdout)
    except ValueError as exc:
        raise AssertionError(f"peerd {' '.join(args)}: exit {out.returncode}: {out.stdout!r} {out.stderr!r}") from exc
    assert isinstance(view, dict)
    return view


def submit(node: NodeProc, *command: str, options: tuple[str, ...] = ()) -> str:
    """Submit without waiting; the task id."""
    view = cli_json(node, "submit", "--image", IMAGE, *options, "--", *command)
    return str(view["task_id"])


def wait_final(node: NodeProc, task_id: str, timeout: float = 120.0) -> dict[str, object]:
    def probe() -> dict[str, object] | None:
        view = cli_json(node, "show", task_id)
        return view if view["state"] in FINAL else None

    return wait_for(f"task {task_id} to end on {node.name}", probe, timeout)


def wait_output(node: NodeProc, task_id: str, text: str, timeout: float = 90.0) -> None:
    """Until the task's output so far (as ``node`` has it) contains ``text``: the container runs."""
    wait_for(f"{text!r} in the output of {task_id}", lambda: text in node.peerd("logs", task_id).stdout, timeout)


def containers_of(peer_id: str) -> list[str]:
    """Every container (running or not) labelled as belonging to that node."""
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=peerd.node={peer_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def peer_id(node: NodeProc) -> str:
    return str(node.status()["peer_id"])
