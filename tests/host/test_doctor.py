"""peerd doctor's checks, on this host and on hosts it can be made to look like."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.executor.engine import EngineInfo
from peerd.executor.gpuaccess import ToolkitFacts
from peerd.host.doctor import (
    Check,
    Findings,
    check_gpus,
    check_overlay,
    check_reachability,
    check_runtime,
    check_view,
    run_checks,
)
from peerd.host.nvml import H100, FakeNvml
from peerd.overlay.host import Availability, Backend
from protocol.reachability import HINTS, Reachability


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.mark.docker
async def test_this_host_passes(tmp_path: Path) -> None:
    checks = await run_checks(None, tmp_path, min_disk_free=1 << 20)
    assert [c.name for c in checks] == ["docker", "gpus", "nvidia-runtime", "cgroup-limits", "disk", "overlay"]
    failing = [c for c in checks if not c.ok]
    assert failing == []
    assert all(c.fix == "" for c in checks)
    assert "Docker" in by_name(checks)["docker"].detail


async def test_unreachable_docker_fails_with_a_fix(tmp_path: Path) -> None:
    checks = by_name(await run_checks(f"unix://{tmp_path}/none.sock", tmp_path, docker_timeout=2))
    assert not checks["docker"].ok and "systemctl" in checks["docker"].fix
    assert not checks["cgroup-limits"].ok


@pytest.mark.docker  # the runtime check needs the docker check to pass
async def test_gpus_without_nvidia_runtime_fail_with_the_toolkit_fix(tmp_path: Path) -> None:
    no_toolkit = lambda _dirs: ToolkitFacts()  # noqa: E731  # whatever this host has installed
    checks = by_name(await run_checks(None, tmp_path, nvml=FakeNvml.identical(2), toolkit_probe=no_toolkit))
    assert checks["gpus"].ok and "2 GPU(s)" in checks["gpus"].detail
    runtime = checks["nvidia-runtime"]
    assert not runtime.ok and "nvidia-container-toolkit" in runtime.fix


async def test_low_disk_fails(tmp_path: Path) -> None:
    checks = by_name(await run_checks(None, tmp_path, min_disk_free=1 << 60))
    assert not checks["disk"].ok and checks["disk"].fix


def test_reachability_passes_public_and_relayed_and_fails_unreachable_with_the_hint() -> None:
    assert check_reachability(Reachability.PUBLIC).ok
    relayed = check_reachability(Reachability.RELAYED, relays=2)
    assert relayed.ok and "2 relay(s)" in relayed.detail and HINTS[Reachability.RELAYED] in relayed.detail
    unreachable = check_reachability(Reachability.UNREACHABLE)
    assert not unreachable.ok and unreachable.fix == HINTS[Reachability.UNREACHABLE]
    assert "forward the listen port" in check_view(unreachable)["detail"]  # the fix follows the failure
    assert check_reachability(Reachability.UNKNOWN).detail.startswith("unknown: the daemon is still checking")


def test_without_a_daemon_reachability_is_unknown() -> None:
    check = check_reachability(None)
    assert check.ok and check.detail.startswith("unknown: start the daemon")


def test_a_host_without_wireguard_passes_and_says_how_to_join_gangs(tmp_path: Path) -> None:
    def findings(overlay: Availability) -> Findings:
        return Findings(EngineInfo(reachable=False), (), None, 0, 0, tmp_path, overlay)

    missing = check_overlay(findings(Availability(None, "no wireguard-go (apt-get install wireguard-go)")))
    assert missing.ok and "cannot join gang jobs" in missing.detail and "apt-get install" in missing.detail
    present = check_overlay(findings(Availability(Backend.USERSPACE, "wireguard-go (userspace) over /dev/net/tun")))
    assert present.ok and "wireguard-go" in present.detail


HOOK_HOST = ToolkitFacts(hook=True)


def _gpu_findings(tmp_path: Path, problem: str | None, remarks: tuple[str, ...] = (),
                  toolkit: ToolkitFacts = HOOK_HOST) -> Findings:
    engine = EngineInfo(reachable=True, api_version="1.41")
    return Findings(engine, (H100,), problem, 0, 0, tmp_path, Availability(None, "-"), toolkit, remarks)


def test_a_gpu_nvml_fails_on_fails_the_check_but_the_others_are_named(tmp_path: Path) -> None:
    check = check_gpus(_gpu_findings(tmp_path, "GPU 1: GPU is lost: left out"))
    assert not check.ok and H100.uuid in check.detail and "GPU is lost" in check.detail and "nvidia-smi" in check.fix


def test_mig_devices_offered_instead_of_their_gpu_are_said(tmp_path: Path) -> None:
    check = check_gpus(_gpu_findings(tmp_path, None, ("GPU 1 (GPU-x) is in MIG mode: offered as its 2 MIG device(s)",)))
    assert check.ok and "MIG mode" in check.detail and "CUDA 12.4" in check.detail


def test_the_runtime_check_names_the_request_form_and_warns_about_swarm_resources(tmp_path: Path) -> None:
    assert check_runtime(_gpu_findings(tmp_path, None)).ok
    weak = check_runtime(_gpu_findings(tmp_path, None, toolkit=ToolkitFacts(hook=True,
                                                                            swarm_resources=("DOCKER_RESOURCE_GPU",))))
    assert not weak.ok and "DOCKER_RESOURCE_GPU" in weak.detail and "swarm-resource" in weak.fix


def test_a_toolkit_that_ignores_the_device_variable_when_unprivileged_fails_the_runtime_check(tmp_path: Path) -> None:
    check = check_runtime(_gpu_findings(tmp_path, None, toolkit=ToolkitFacts(hook=True, unprivileged_env=False)))
    assert not check.ok and "see no GPU" in check.detail and "envvar-when-unprivileged" in check.fix
