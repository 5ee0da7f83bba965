"""The metrics endpoint of real `peerd run` processes: scraped over HTTP, moving with events."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from peerd.devnet import FAST_CONFIG, free_port

from .harness import IMAGE, cli_json, provider_network


def metrics_on(port: int) -> dict[str, str]:
    return {"metrics.listen": f'"127.0.0.1:{port}"'}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


@pytest.mark.docker
def test_metrics_are_served_on_loopback_and_move_with_a_job() -> None:
    provider_port, requester_port = free_port(), free_port()
    with provider_network(metrics_on(provider_port), metrics_on(requester_port)) as net:
        provider, requester = net.nodes["provider"], net.nodes["requester"]
        before_p, before_r = scrape(provider_port), scrape(requester_port)
        for name in ("peerd_peers_known", "peerd_peers_connected", "peerd_gpu_leases", "peerd_gpus_leased",
                     "peerd_jobs_running", "peerd_draining", "peerd_negotiation_seconds_count",
                     "peerd_executor_overhead_seconds_count", "peerd_placement_seconds_count"):
            assert name in before_p and name in before_r, name
        assert before_r['peerd_adverts_total{outcome="accepted"}'] >= 1  # the provider's advert
        assert before_r["peerd_peers_known"] >= 1 and before_r["peerd_peers_connected"] >= 1
        assert before_p['peerd_tasks{role="provider",state="succeeded"}'] == 0
        assert before_r["peerd_placement_seconds_count"] == 0

        out = requester.peerd("submit", "--image", IMAGE, "--wait", "--", "echo", "hi")
        assert out.returncode == 0, out.stderr

        after_p, after_r = scrape(provider_port), scrape(requester_port)
        assert after_p['peerd_tasks{role="provider",state="succeeded"}'] == 1
        assert after_r['peerd_tasks{role="requester",state="succeeded"}'] == 1
        assert after_r["peerd_placement_seconds_count"] == 1
        assert 0 < after_r["peerd_placement_seconds_sum"] < 120
        # `peerd status --json` carries the same figures.
        counters = cli_json(provider, "status")["counters"]
        assert isinstance(counters, dict)
        assert counters["tasks.provider.succeeded"] == 1 and counters["gpu_leases"] == 0


def test_a_non_loopback_metrics_address_stops_the_daemon_with_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "node"
    subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(home), "init"], check=True, capture_output=True)
    config = FAST_CONFIG.format(role="requester", port=free_port(), bootstrap="")
    (home / "config.toml").write_text(config + '\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    out = subprocess.run([sys.executable, "-m", "peerd.cli", "--home", str(home), "run"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1
    assert "metrics.listen '0.0.0.0:9464': 0.0.0.0 is not a loopback address" in out.stderr
    assert not (home / "control.sock").exists()
