"""How this host's dockerd gives a container its GPUs, decided by what works here. Pure, but for ``probe_toolkit``.

Three request forms exist, and each works only on some hosts:

* ``HOOK``: a ``--gpus``-style DeviceRequest (driver "", capability ``gpu``, the GPUs' UUIDs). dockerd serves
  it only when the toolkit's ``nvidia-container-runtime-hook`` was on its PATH when it started (moby registers
  its ``nvidia`` device driver then; Docker 28.3 and later may serve it through CDI instead when
  ``nvidia-cdi-hook`` is there). The hook refuses to run when the toolkit's config sets ``mode`` to ``cdi`` or
  ``csv`` ("invoking the NVIDIA Container Runtime Hook directly ... is not supported").
* ``CDI``: a DeviceRequest with driver ``cdi`` and ``nvidia.com/gpu=<UUID>`` names: needs CDI enabled in dockerd
  (``CDISpecDirs`` in ``docker info``) and an NVIDIA CDI spec (kind ``nvidia.com/gpu``) in one of those
  directories that names devices by UUID (``nvidia-ctk cdi generate`` does by default since toolkit 1.14).
* ``RUNTIME``: ``Runtime: "nvidia"`` and ``NVIDIA_VISIBLE_DEVICES``: the toolkit's runtime, registered in
  dockerd, in whatever mode its config sets.

``CDISpecDirs`` alone means nothing: Docker 28.2 and later report ``/etc/cdi`` and ``/var/run/cdi`` on every
host. ``decide`` prefers HOOK (every Docker since 19.03, MIG devices included), then CDI, then RUNTIME.
A start that fails for want of the GPU runtime (``no_gpu_runtime_error``) shows the decision was wrong: the
executor then takes GPU support back until the next inventory read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine.py imports plan.py, which imports this module
    from peerd.executor.engine import EngineInfo

HOOK_BINARY = "nvidia-container-runtime-hook"
TOOLKIT_CONFIG = Path("/etc/nvidia-container-runtime/config.toml")
CDI_KIND = "nvidia.com/gpu"
NON_HOOK_MODES = ("cdi", "csv", "jit-cdi")  # the toolkit modes in which its hook refuses a --gpus request

# What dockerd or the runtime says when a container asks for GPUs it cannot give (moby's
# incompatibleDeviceRequest, the CDI cache, the runtime shim, the hook in a non-legacy mode).
_NO_RUNTIME = (
    "could not select device driver",
    "unresolvable cdi devices",
    "unknown or invalid runtime name",
    "unknown runtime specified nvidia",
    "nvidia-container-cli",
    "nvidia-container-runtime-hook",
    "invoking the nvidia container runtime hook directly",
    "cdi device injection failed",
)


class GpuAccess(StrEnum):
    NONE = "none"
    HOOK = "hook"  # --gpus DeviceRequest
    CDI = "cdi"  # DeviceRequest driver "cdi", nvidia.com/gpu=<UUID>
    RUNTIME = "runtime"  # Runtime "nvidia" + NVIDIA_VISIBLE_DEVICES


@dataclass(frozen=True)
class ToolkitFacts:
    """What this host's files say about the NVIDIA container toolkit (``probe_toolkit``)."""

    hook: bool = False  # nvidia-container-runtime-hook on PATH
    mode: str = ""  # the runtime config's [nvidia-container-runtime] mode ("" = no config / not set)
    cdi_devices: tuple[str, ...] = ()  # device names in NVIDIA CDI specs (kind nvidia.com/gpu) in dockerd's dirs
    swarm_resources: tuple[str, ...] = ()  # the config's swarm-resource variables (they outrank NVIDIA_VISIBLE_DEVICES)
    unprivileged_env: bool = True  # accept-nvidia-visible-devices-envvar-when-unprivileged


@dataclass(frozen=True)
class GpuSupport:
    access: GpuAccess
    detail: str  # why, in plain words

    @property
    def ok(self) -> bool:
        return self.access is not GpuAccess.NONE


NO_SUPPORT = GpuSupport(GpuAccess.NONE, "not probed")


def decide(engine: EngineInfo, toolkit: ToolkitFacts) -> GpuSupport:
    """The request form that works with this dockerd and toolkit, or NONE and why."""
    if not engine.reachable:
        return GpuSupport(GpuAccess.NONE, f"dockerd is not reachable: {engine.detail}")
    hook_mode_ok = toolkit.mode not in NON_HOOK_MODES
    if toolkit.hook and hook_mode_ok:
        return GpuSupport(GpuAccess.HOOK, f"--gpus requests through {HOOK_BINARY}")
    uuid_names = [d for d in toolkit.cdi_devices if d.startswith(("GPU-", "MIG-"))]
    if engine.cdi_spec_dirs and uuid_names:
        return GpuSupport(GpuAccess.CDI, f"CDI devices {CDI_KIND}=<UUID> ({len(uuid_names)} named by UUID)")
    if "nvidia" in engine.runtimes:
        how = f"mode {toolkit.mode}" if toolkit.mode else "its configured mode"
        return GpuSupport(GpuAccess.RUNTIME, f"the nvidia runtime ({how})")
    return GpuSupport(GpuAccess.NONE, _why_none(engine, toolkit, hook_mode_ok))


def _why_none(engine: EngineInfo, toolkit: ToolkitFacts, hook_mode_ok: bool) -> str:
    if toolkit.hook and not hook_mode_ok:
        return (f"the toolkit runs in {toolkit.mode} mode, where its hook refuses --gpus requests, and dockerd "
                "has no nvidia runtime")
    if toolkit.cdi_devices and engine.cdi_spec_dirs:
        return f"the NVIDIA CDI spec names no device by UUID ({', '.join(toolkit.cdi_devices[:4])})"
    if engine.cdi_spec_dirs:
        return (f"dockerd reads CDI specs from {', '.join(engine.cdi_spec_dirs)} but none is NVIDIA's, no "
                f"{HOOK_BINARY} is on PATH and no nvidia runtime is configured")
    return f"no {HOOK_BINARY} on PATH, no NVIDIA CDI spec and no nvidia runtime (runtimes: " \
           f"{', '.join(engine.runtimes) or 'none'})"


def is_no_gpu_runtime(message: str) -> bool:
    """dockerd's answer to a GPU container's create or start says it cannot give GPUs here (an image that wants a
    newer CUDA than the driver's is no fault of the runtime: ``unmet_cuda``)."""
    text = message.lower()
    return unmet_cuda(message) is None and any(needle in text for needle in _NO_RUNTIME)


_REQUIRE_CUDA = re.compile(r"(?:^|[\s,])cuda>=(\d+(?:\.\d+)*)")


def cuda_requirement(require: str) -> str:
    """The CUDA version an image's NVIDIA_REQUIRE_CUDA asks for ("cuda>=12.4 brand=tesla,driver>=470 ..." gives
    "12.4"); "" when it asks none. The brand/driver alternatives (forward compatibility) are not judged here."""
    found = _REQUIRE_CUDA.search(require)
    return found.group(1) if found else ""


def unmet_cuda(message: str) -> str | None:
    """The CUDA version a start failed for ("unsatisfied condition: cuda>=12.4" from the toolkit), or None."""
    found = re.search(r"unsatisfied condition: cuda>=(\d+(?:\.\d+)*)", message)
    return found.group(1) if found else None


# ---- probing the host's files (blocking: call in a worker thread) ------------------------------------
_MODE = re.compile(r'^\s*mode\s*=\s*"([^"]*)"', re.MULTILINE)
_SWARM = re.compile(r'^\s*swarm-resource\s*=\s*"([^"]*)"', re.MULTILINE)
_UNPRIVILEGED = re.compile(r"^\s*accept-nvidia-visible-devices-envvar-when-unprivileged\s*=\s*(\w+)", re.MULTILINE)
_KIND = re.compile(r'^\s*"?kind"?\s*:\s*"?([^"\s,]+)"?', re.MULTILINE)
_NAME = re.compile(r'^\s*-?\s*"?name"?\s*:\s*"?([^"\s,]+)"?', re.MULTILINE)


def read_toolkit_config(text: str) -> tuple[str, tuple[str, ...], bool]:
    """(mode, swarm-resource variables, unprivileged env accepted) from the toolkit's config.toml."""
    mode = _MODE.search(text)
    swarm = _SWARM.search(text)
    unprivileged = _UNPRIVILEGED.search(text)
    names = tuple(n.strip() for n in swarm.group(1).split(",") if n.strip()) if swarm else ()
    return (mode.group(1) if mode else "", names, unprivileged is None or unprivileged.group(1) != "false")


def cdi_device_names(text: str) -> tuple[str, ...]:
    """The device names of one CDI spec (YAML or JSON) if its kind is NVIDIA's GPUs, else ()."""
    try:
        doc = json.loads(text)
    except ValueError:
        kind = _KIND.search(text)
        if kind is None or kind.group(1) != CDI_KIND:
            return ()
        return tuple(dict.fromkeys(_NAME.findall(text)))
    if not isinstance(doc, dict) or doc.get("kind") != CDI_KIND:
        return ()
    devices = doc.get("devices")
    return tuple(str(d["name"]) for d in devices if isinstance(d, dict) and "name" in d) \
        if isinstance(devices, list) else ()


def probe_toolkit(
    cdi_dirs: tuple[str, ...], config: Path = TOOLKIT_CONFIG, path: str | None = None,
) -> ToolkitFacts:
    """Blocking. The toolkit as this host's files show it (a dockerd elsewhere is judged by ours); ``path``:
    where to look for the hook (default $PATH, which is dockerd's too on a packaged install)."""
    mode, swarm, unprivileged = "", tuple[str, ...](), True
    try:
        mode, swarm, unprivileged = read_toolkit_config(config.read_text(errors="replace"))
    except OSError:
        pass
    names: list[str] = []
    for directory in cdi_dirs:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith((".yaml", ".yml", ".json")) and entry.is_file():
                try:
                    names.extend(cdi_device_names(Path(entry.path).read_text(errors="replace")))
                except OSError:
                    continue
    return ToolkitFacts(hook=shutil.which(HOOK_BINARY, path=path) is not None, mode=mode, cdi_devices=tuple(names),
                        swarm_resources=swarm, unprivileged_env=unprivileged)
