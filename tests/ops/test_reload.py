"""SIGHUP re-reads the policy of a running provider (real processes, real dockerd)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from peerd.config import load
from peerd.devnet import wait_for
from peerd.executor.docker import DockerExecutor
from peerd.identity import init_home
from peerd.node import Node

from .harness import IMAGE, provider_network

pytestmark = pytest.mark.docker  # needs a real dockerd

DISALLOW = '[policy]\nimages = ["registry.invalid/*"]\n'


def reloads(node: object) -> tuple[int, int]:
    counters = node.status()["counters"]  # type: ignore[attr-defined]
    return counters["config_reloads"], counters["config_reload_errors"]


def test_sighup_applies_a_new_image_policy_and_survives_a_broken_config() -> None:
    with provider_network() as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        config = provider.home / "config.toml"
        original = config.read_text()
        assert provider.peerd("submit", "--local", "--image", IMAGE, "--wait", "--", "true").returncode == 0
        assert reloads(provider) == (0, 0)

        config.write_text(original + "\n[policy\n")  # not TOML: refused, the old policy stays
        provider.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for("the broken reload to be counted", lambda: reloads(provider) == (0, 1), 30)
        assert provider.proc.poll() is None  # type: ignore[union-attr]

        config.write_text(original.replace("[policy]\n", DISALLOW))
        provider.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for("the reload to be applied", lambda: reloads(provider) == (1, 1), 30)

        out = requester.peerd("--json", "submit", "--image", IMAGE, "--wait", "--", "true")
        assert out.returncode == 1, out.stderr
        view = json.loads(out.stdout)
        assert view["state"] == "not_placed", view
        assert [(a["outcome"], a["reason"]) for a in view["attempts"]] == [("rejected", "image_not_allowed")], view
        # Asked directly (a --local task), the provider refuses it as well.
        out = provider.peerd("--json", "submit", "--local", "--image", IMAGE, "--wait", "--", "true")
        local = json.loads(out.stdout)
        assert [a["reason"] for a in local["attempts"]] == ["image_not_allowed"], local
        assert provider.status()["tasks_running"] == 0 and provider.proc.poll() is None  # type: ignore[union-attr]


def test_reload_reaches_the_executors_own_policy_and_the_prices(tmp_path: Path) -> None:
    # The executor checks every container against its own ProviderPolicy (defence in depth
    # behind admission): a reload must replace that one too. No daemon needed for this part.
    signer, _ = init_home(tmp_path)
    node = Node(load(tmp_path))
    node.executor = DockerExecutor(signer.peer_id, tmp_path / "tasks")
    (tmp_path / "config.toml").write_text(
        '[policy]\nimages = ["registry.invalid/*"]\nmax_timeout = "5m"\n[pricing]\ncpu_hour = 0.5\n'
        '[limits]\npids = 7\n'
    )
    assert node.reload() is True
    assert node.executor.policy.allowed_images == ("registry.invalid/*",)
    assert node.executor.policy.max_time_limit == 300
    assert node.config.pricing.cpu_hour == 0.5 and node.config.policy.max_timeout == 300
    assert node.config.limits.pids == 512  # [limits] needs a restart
    assert node.config_reloads == 1
