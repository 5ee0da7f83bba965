"""SIGHUP re-reads the policy of a running provider (real processes, real dockerd)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peerd.cli.context import EXIT_FAILED
from peerd.devnet import NodeProc, wait_for
from peerd.host.identity import init_home
from tests.daemon.unstarted import unstarted_lifecycle

from .harness import IMAGE, OpsNet, provider_network, with_settings

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


async def test_reload_reaches_the_executors_own_policy_and_the_prices(tmp_path: Path) -> None:
    # The executor checks every container against its own ProviderPolicy (defence in depth
    # behind admission): a reload must replace that one too. No daemon needed for this part.
    init_home(tmp_path)
    async with unstarted_lifecycle(tmp_path, provider=True) as lifecycle:
        (tmp_path / "config.toml").write_text(
            '[policy]\nimages = ["registry.invalid/*"]\nmax_timeout = "5m"\n[pricing]\ncpu_hour = 0.5\n'
            '[limits]\npids = 7\n'
        )
        assert lifecycle.reload() is True
        ours, state = lifecycle.services.provider, lifecycle.state
        assert ours is not None
        assert ours.executor.policy.allowed_images == ("registry.invalid/*",)
        assert ours.executor.policy.max_time_limit == 300
        assert ours.provider.settings.policy.max_time_limit == 300 and ours.provider.settings.price_cpu_hour == 0.5
        assert state.config.pricing.cpu_hour == 0.5 and state.config.policy.max_timeout == 300
        assert state.config.limits.pids == 512  # [limits] needs a restart
        assert state.config_reloads == 1


def _non_utf8(text: str) -> bytes:
    return text.replace("[policy]\n", "[policy]\nmax_timeout = \"2h\"\n").encode() + b"# caf\xe9\n"


def _out_of_range(text: str) -> bytes:
    return with_settings(text, {"policy.max_timeout": '"40d"', "pricing.cpu_hour": "0.75"}).encode()


def _broken_toml(text: str) -> bytes:
    return (with_settings(text, {"pricing.cpu_hour": "0.75"}) + "[policy\n").encode()


UNUSABLE = {"non-UTF-8 byte": _non_utf8, "out-of-range value": _out_of_range, "broken TOML": _broken_toml}


def advert_of(node: NodeProc, seen_by: NodeProc, version: float) -> dict[str, object] | None:
    """``node``'s advert as ``seen_by`` holds it, once it was issued after ``version`` (unix time)."""
    peers = seen_by.call("peers")
    assert isinstance(peers, list)
    peer_id = node.status()["peer_id"]
    return next((p["advert"] for p in peers
                 if p["peer_id"] == peer_id and p["advert"] and p["advert"]["issued_at"] > version), None)


def test_sighup_with_an_unusable_config_keeps_the_daemon_and_its_old_settings() -> None:
    with OpsNet() as net:
        seed = net.add_seed()
        node = net.add_with("provider", "provider", {"pricing.cpu_hour": "0.25"})
        config = node.home / "config.toml"
        original = config.read_text()
        for failed, (what, spoil) in enumerate(UNUSABLE.items(), 1):
            config.write_bytes(spoil(original))
            node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            wait_for(f"the reload of a config with a {what} to fail", lambda n=failed: reloads(node) == (0, n), 30)
            assert node.proc.poll() is None, what  # type: ignore[union-attr]
            reload = node.status()["config_reload"]
            assert isinstance(reload, dict) and reload["ok"] is False, (what, reload)
            assert str(config) in str(reload["error"]), (what, reload)
            # The CLI still reads the status. It reads only the control socket's key (peerd/home.py): a file
            # that is not TOML is broken for it too (one warning), a bad value is the daemon's to report.
            out = node.peerd("status")
            assert out.returncode == 0, (what, out.stderr)
            assert "config reload" in out.stdout and "FAILED" in out.stdout, (what, out.stdout)
            warnings = 0 if what == "out-of-range value" else 1
            assert len(out.stderr.splitlines()) == warnings and "Traceback" not in out.stderr, (what, out.stderr)
        log_text = node.log_path.read_text(errors="replace")
        assert len([line for line in log_text.splitlines() if "config not reloaded" in line]) == 3, log_text
        assert "Traceback" not in log_text
        spoiled = time.time()  # every failed reload re-published nothing new: adverts still carry the old settings
        advert = wait_for("an advert issued after the failed reloads", lambda: advert_of(node, seed, spoiled), 30)
        assert advert["price_cpu_hour"] == 0.25 and advert["max_timeout"] == 3600, advert

        config.write_text(original)
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for("the good reload", lambda: reloads(node) == (1, 3), 30)
        assert node.status()["config_reload"]["ok"] is True  # type: ignore[index]


@pytest.mark.parametrize("what", list(UNUSABLE))
async def test_reload_of_an_unusable_config_keeps_the_old_settings_in_process(tmp_path: Path, what: str) -> None:
    init_home(tmp_path)
    (tmp_path / "config.toml").write_text('[policy]\nmax_timeout = "1h"\n[pricing]\ncpu_hour = 0.25\n')
    async with unstarted_lifecycle(tmp_path, provider=False) as lifecycle:
        state = lifecycle.state
        before = state.config
        (tmp_path / "config.toml").write_bytes(UNUSABLE[what]('[policy]\n[pricing]\n'))
        assert lifecycle.reload() is False
        assert state.config == before
        assert state.config_reload_errors == 1 and state.last_reload is not None and not state.last_reload["ok"]


def test_peerd_run_with_an_unusable_config_says_so_in_one_line(tmp_path: Path) -> None:
    init_home(tmp_path)
    for what, spoil in UNUSABLE.items():
        (tmp_path / "config.toml").write_bytes(spoil("[policy]\n[pricing]\n"))
        out = subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(tmp_path), "run"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == EXIT_FAILED, (what, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, (what, out.stderr)
        assert out.stderr.startswith("peerd run: ") and str(tmp_path / "config.toml") in out.stderr, out.stderr
