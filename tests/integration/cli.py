"""A devnet's nodes driven through the ``peerd`` CLI, as a user would: the usual set of nodes, jobs, task views
and waits on them (bounded polls of the processes: ``peerd.devnet.wait_for``). For loopback and namespace devnets
alike (``tests/integration/netns.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TypeVar

from peerd.devnet import DevNet, NodeProc, wait_for
from protocol.messages import FINAL_STATES as TASK_FINAL_STATES

N = TypeVar("N", bound=DevNet)


def start_nodes(devnet: N, providers: Sequence[str] = ("provider",)) -> N:
    """A seed, ``providers`` and a ``requester``; returns (``devnet``) once the requester holds every provider's
    advert."""
    devnet.add_seed()
    for name in providers:
        devnet.add(name, "provider")
    devnet.add("requester", "requester")
    devnet.wait_adverts("requester", list(providers))
    return devnet


IMAGE = os.environ.get("PEERD_TEST_IMAGE", "peerd-test/busybox:1")
FINAL_STATES = frozenset(state.value for state in TASK_FINAL_STATES)


def cli_json(node: NodeProc, *args: str) -> object:
    out = node.peerd("--json", *args)
    if out.returncode not in (0, 1):
        raise AssertionError(f"peerd {' '.join(args)} on {node.name} exited {out.returncode}: {out.stderr}")
    return json.loads(out.stdout)


def submit(node: NodeProc, script: str, *, wait: bool, flags: Sequence[str] = ()) -> dict[str, object]:
    """``peerd submit [flags]`` of ``sh -c script``; the task view (``wait``) or {"task_id": …}."""
    view = cli_json(node, "submit", "--image", IMAGE, *(["--wait"] if wait else []), *flags, "--", "sh", "-c", script)
    assert isinstance(view, dict)
    return view


def show(node: NodeProc, task_id: str) -> dict[str, object]:
    view = cli_json(node, "show", task_id)
    assert isinstance(view, dict)
    return view


def wait_final(node: NodeProc, task_id: str, timeout: float) -> dict[str, object]:
    def final() -> dict[str, object] | None:
        view = show(node, task_id)
        return view if view["state"] in FINAL_STATES else None

    return wait_for(f"task {task_id} on {node.name} to reach a final state", final, timeout)


def wait_leased(node: NodeProc, task_id: str, timeout: float = 30.0) -> str:
    """Wait until the task runs on a provider; that provider's peer ID."""
    def leased() -> str | None:
        view = show(node, task_id)
        return str(view["provider"]) if view["state"] == "running" and view["provider"] else None

    return wait_for(f"task {task_id} to be leased", leased, timeout)


def advert_times(node: NodeProc) -> dict[str, float]:
    """peer ID → issued_at of the advert ``node`` holds for it."""
    peers = cli_json(node, "peers")
    assert isinstance(peers, list)
    return {p["peer_id"]: float(p["advert"]["issued_at"]) for p in peers if p.get("advert")}
