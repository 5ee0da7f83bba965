"""`peerd doctor`: can this host provide? Each check says what it found and, when it
fails, what to do about it in plain words. The CLI prints them; nothing here prints.

Checks (in order): docker, gpus (NVML), nvidia-runtime, cgroup-limits, disk, overlay (WireGuard for
gang jobs), then
reachability: whether peers can dial this node, which only a running daemon knows
(its dial-back check, ``peerd.p2p.reachability``); without one it says "unknown".
A CPU-only host passes: no GPUs and no NVIDIA runtime is a valid setup; so does a host without
WireGuard (it only cannot join gang jobs, and says how to fix that). A relayed
node passes too (it takes small jobs through its relays); an unreachable one fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from peerd.config import Config
from peerd.control.ops import DoctorCheck
from peerd.executor.engine import EngineInfo, inspect_engine
from peerd.executor.gpuaccess import GpuAccess, GpuSupport, ToolkitFacts, decide, probe_toolkit
from peerd.host.nvml import GpuInfo, NvmlSource, diagnose_gpus
from peerd.host.resources import disk_free, existing_ancestor
from peerd.overlay.host import Availability, probe
from protocol.reachability import HINTS, Reachability

MIN_API_VERSION = (1, 40)  # DeviceRequests (GPUs by UUID) arrived with API 1.40 / Docker 19.03
GiB = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # plain-language remedy; "" when ok


@dataclass(frozen=True)
class Findings:
    engine: EngineInfo
    gpus: tuple[GpuInfo, ...]
    nvml_problem: str | None
    disk_free: int
    min_disk_free: int
    home: Path
    overlay: Availability
    toolkit: ToolkitFacts = ToolkitFacts()
    nvml_remarks: tuple[str, ...] = ()  # MIG devices offered instead of their GPU, memory NVML does not report

    @property
    def gpu_support(self) -> GpuSupport:
        return decide(self.engine, self.toolkit)


def _api_tuple(version: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (version or "0").split("."))
    except ValueError:
        return (0,)


def check_docker(f: Findings) -> Check:
    e = f.engine
    if not e.reachable:
        return Check(
            "docker", False, f"dockerd is not reachable: {e.detail}",
            "Install Docker and start it (sudo systemctl enable --now docker); if it runs, let this "
            "user use it (sudo usermod -aG docker $USER, then log in again) or set resources.docker_url.",
        )
    if _api_tuple(e.api_version) < MIN_API_VERSION:
        return Check(
            "docker", False, f"Docker {e.version} speaks API {e.api_version}, too old for GPU requests",
            "Upgrade Docker to 19.03 or newer.",
        )
    return Check("docker", True, f"Docker {e.version} (API {e.api_version})")


def check_gpus(f: Findings) -> Check:
    """What NVML found. A device NVML fails on fails the check (the others are still offered); MIG-enabled GPUs
    are offered as their MIG devices (their own UUIDs and memory), never whole."""
    remarks = "".join(f"; {remark}" for remark in f.nvml_remarks)
    if f.gpus and f.nvml_problem:
        names = ", ".join(f"{g.name} ({g.uuid})" for g in f.gpus)
        return Check(
            "gpus", False,
            f"{len(f.gpus)} GPU(s) offered ({names}), but NVML fails on others: {f.nvml_problem}{remarks}",
            "Find the failing GPU with nvidia-smi: one fallen off the bus (GPU is lost) needs a reset "
            "(nvidia-smi -r) or a reboot; no permission means this user cannot open /dev/nvidia*.",
        )
    if f.gpus:
        names = ", ".join(f"{g.name} ({g.uuid})" for g in f.gpus)
        return Check("gpus", True, f"{len(f.gpus)} GPU(s), driver {f.gpus[0].driver_version}"
                                   f"{', CUDA ' + f.gpus[0].cuda_version if f.gpus[0].cuda_version else ''}: "
                                   f"{names}{remarks}")
    if f.nvml_problem:
        return Check(
            "gpus", False, f"an NVIDIA driver is installed but NVML fails: {f.nvml_problem}{remarks}",
            "Make the driver work (nvidia-smi must list the GPUs): a driver/library version mismatch "
            "is usually fixed by a reboot after a driver upgrade.",
        )
    if f.nvml_remarks:
        return Check("gpus", True, f"no GPU to offer{remarks}")
    return Check("gpus", True, "no NVIDIA driver found: this node offers CPUs only")


TOOLKIT_FIX = ("Install the NVIDIA Container Toolkit (package nvidia-container-toolkit), then run "
               "'sudo nvidia-ctk runtime configure --runtime=docker' and 'sudo systemctl restart docker'.")


def check_runtime(f: Findings) -> Check:
    e = f.engine
    if not f.gpus:
        return Check("nvidia-runtime", True, "not needed: no GPUs to offer")
    if not e.reachable:
        return Check("nvidia-runtime", False, "unknown: dockerd is not reachable", "Fix the docker check first.")
    support = f.gpu_support
    if not support.ok:
        return Check("nvidia-runtime", False,
                     f"this host has {len(f.gpus)} GPU(s) but dockerd cannot give them to containers: "
                     f"{support.detail}: GPU jobs will be refused", TOOLKIT_FIX)
    if not f.toolkit.unprivileged_env and support.access is not GpuAccess.CDI:
        return Check("nvidia-runtime", False,
                     f"containers would get GPUs through {support.detail}, but the toolkit ignores "
                     "NVIDIA_VISIBLE_DEVICES in unprivileged containers: peerd's jobs would see no GPU",
                     "Set accept-nvidia-visible-devices-envvar-when-unprivileged = true in "
                     "/etc/nvidia-container-runtime/config.toml, or generate a CDI spec (nvidia-ctk cdi generate).")
    weak = toolkit_weaknesses(f.toolkit)
    if weak:
        return Check("nvidia-runtime", False, f"containers get GPUs through {support.detail}, but {weak}",
                     "Comment out swarm-resource in /etc/nvidia-container-runtime/config.toml and restart docker.")
    return Check("nvidia-runtime", True, f"containers get GPUs through {support.detail}")


def toolkit_weaknesses(toolkit: ToolkitFacts) -> str:
    """Toolkit settings that let a container's own environment choose GPUs ("" when none)."""
    if toolkit.swarm_resources:
        return (f"the toolkit reads {', '.join(toolkit.swarm_resources)} before NVIDIA_VISIBLE_DEVICES "
                "(swarm-resource): an image that sets it could reach every GPU")
    return ""


def check_cgroups(f: Findings) -> Check:
    e = f.engine
    if not e.reachable:
        return Check("cgroup-limits", False, "unknown: dockerd is not reachable", "Fix the docker check first.")
    flags = {"memory": e.memory_limit, "swap": e.swap_limit, "pids": e.pids_limit, "cpu quota": e.cpu_cfs_quota}
    missing = [name for name, on in flags.items() if not on]
    if not missing:
        return Check("cgroup-limits", True, "memory, swap, pids and CPU quota limits are enforced")
    return Check(
        "cgroup-limits", False, f"dockerd cannot enforce: {', '.join(missing)} limits",
        "Enable the missing cgroup controllers: boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) "
        "or add 'cgroup_enable=memory swapaccount=1' to the kernel command line, then reboot.",
    )


def check_disk(f: Findings) -> Check:
    free_gib = f.disk_free / GiB
    if f.disk_free >= f.min_disk_free:
        return Check("disk", True, f"{free_gib:.1f} GiB free under {f.home}")
    return Check(
        "disk", False, f"only {free_gib:.1f} GiB free under {f.home} (want {f.min_disk_free / GiB:.0f} GiB)",
        "Free some disk space (docker system prune removes unused images), or move the peerd home "
        "to a larger disk.",
    )


def check_overlay(f: Findings) -> Check:
    """Gang jobs need a WireGuard overlay; a host without one still provides single jobs."""
    if f.overlay.ok:
        return Check("overlay", True, f"gang jobs can join a private overlay: {f.overlay.detail}")
    return Check("overlay", True, f"this node cannot join gang jobs (--nodes): {f.overlay.detail}")


CHECKS: tuple[Callable[[Findings], Check], ...] = (
    check_docker, check_gpus, check_runtime, check_cgroups, check_disk, check_overlay,
)


NO_DAEMON = "unknown: start the daemon (peerd run); only a running node can ask its peers to dial it back"


def check_reachability(state: Reachability | None, relays: int = 0) -> Check:
    """Whether peers can dial this node, as the daemon's dial-back check found (None: no daemon)."""
    if state is None:
        return Check("reachability", True, NO_DAEMON)
    hint = HINTS[state]
    if state is Reachability.PUBLIC:
        return Check("reachability", True, f"public: {hint}")
    if state is Reachability.RELAYED:
        return Check("reachability", True, f"relayed through {relays} relay(s): {hint}")
    if state is Reachability.UNKNOWN:
        return Check("reachability", True, f"unknown: the daemon is still checking ({hint})")
    return Check("reachability", False, "unreachable: no peer could dial this node and no relay holds it", hint)


async def run_checks(
    docker_base_url: str | None,
    home: Path,
    *,
    nvml: NvmlSource | None = None,
    min_disk_free: int = 5 * GiB,
    docker_timeout: float = 5.0,
    toolkit_probe: Callable[[tuple[str, ...]], ToolkitFacts] | None = None,
) -> list[Check]:
    """Every check, in order. ``nvml`` defaults to the host's NVML (a FakeNvml in tests)."""
    engine = await inspect_engine(docker_base_url, timeout=docker_timeout)
    report = await diagnose_gpus(nvml)
    free = await trio.to_thread.run_sync(disk_free, home)
    toolkit = await trio.to_thread.run_sync(toolkit_probe or probe_toolkit, engine.cdi_spec_dirs)
    findings = Findings(engine, report.gpus, report.problem, free, min_disk_free, existing_ancestor(home), probe(),
                        toolkit, report.remarks)
    return [check(findings) for check in CHECKS]


def check_view(check: Check) -> DoctorCheck:
    """A check as the control socket and the CLI show it: the fix follows a failure."""
    return DoctorCheck(name=check.name, ok=check.ok,
                       detail=check.detail if check.ok else f"{check.detail} — {check.fix}")


async def doctor_views(
    config: Config, reachability: Reachability | None = None, relays: int = 0,
) -> list[DoctorCheck]:
    """Every check for the node ``config`` describes, as views; ``reachability`` is the daemon's (None: none)."""
    checks = await run_checks(config.resources.docker_url or None, config.home)
    return [check_view(c) for c in [*checks, check_reachability(reachability, relays)]]


def run_in_process(config: Config) -> list[DoctorCheck]:
    """The checks without a daemon, for ``peerd doctor`` when none answers (its own trio run)."""
    return trio.run(doctor_views, config)
