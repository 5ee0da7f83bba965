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
    """A DevNet whose nodes take config changes: ``settings[name]`` = {"section.key": TOML value}."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict[str, dict[str, str]] = {}

    def config_text(self, node: NodeProc) -> str:
        return with_settings(super().config_text(node), self.settings.get(node.name, {}))

    def add_with(self, name: str, role: str, settings: dict[str, str] | None = None) -> NodeProc:
        self.settings[name] = dict(settings or {})
        return self.add(name, role)


def with_settings(text: str, settings: dict[str, str]) -> str:
    """``text`` (a config.toml) with keys set: a key already there is replaced, a new one added
    to its section (a new section is appended)."""
    lines = text.splitlines()
    for dotted, value in settings.items():
        section, key = dotted.split(".", 1)
        header = f"[{section}]"
        if header not in lines:
            lines += ["", header]
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        found = [i for i in range(start, end) if lines[i].split("=", 1)[0].strip() == key]
        if found:
            lines[found[0]] = f"{key} = {value}"
        else:
            lines.insert(start, f"{key} = {value}")
    return "\n".join(lines) + "\n"


@contextmanager
def provider_network(provider: dict[str, str] | None = None,
                     requester: dict[str, str] | None = None) -> Iterator[OpsNet]:
    """seed + one provider + one requester (with these settings), the requester holding the provider's advert."""
    with OpsNet() as net:
        net.add_seed()
        net.add_with("provider", "provider", provider)
        net.add_with("requester", "requester", requester)
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
