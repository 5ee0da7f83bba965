"""The systemd units in systemd/: systemd-analyze accepts them, and they keep their settings.

`systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and
/opt/peerd/venv/bin/peerd only exists on an installed host, so the checks run on a
copy whose ExecStart path points at /bin/true (arguments kept). verify exits 0 even
on unknown keys or unparsable values (it only warns), so we require empty output.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from peerd.config import Config
from peerd.daemon.drainplan import EXIT_MARGIN, drain_budget, stop_timeout

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ("peerd.service", "peerd-seed.service")
INSTALLED_PEERD = "/opt/peerd/venv/bin/peerd"

Unit = dict[str, list[tuple[str, str]]]

COMMON_SERVICE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "peerd",
    "Group": "peerd",
    "Environment": "PEERD_HOME=/var/lib/peerd",
    "StateDirectory": "peerd",
    "RuntimeDirectory": "peerd",
    "RuntimeDirectoryMode": "0750",
    "ConfigurationDirectory": "peerd",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "UMask": "0027",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}

PER_UNIT_SETTINGS = {
    "peerd.service": {
        "ExecStart": f"{INSTALLED_PEERD} run",
        "SupplementaryGroups": "docker",
        "PrivateDevices": "no",
        "DevicePolicy": "closed",
    },
    "peerd-seed.service": {
        "ExecStart": f"{INSTALLED_PEERD} run --seed",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
    },
}

# Exposure scores from `systemd-analyze security --offline=yes` (0 = locked down,
# 10 = unprotected), measured at 3.5 and 3.2; a rise means hardening was removed.
MAX_EXPOSURE = {"peerd.service": 3.5, "peerd-seed.service": 3.2}


def parse_unit(text: str) -> Unit:
    """Sections to (key, value) lists, in order; repeated keys are kept."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        assert section is not None, f"setting outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def load(name: str) -> Unit:
    return parse_unit((UNIT_DIR / name).read_text())


def verifiable_copy(name: str, dest: Path) -> Path:
    text = (UNIT_DIR / name).read_text()
    assert f"ExecStart={INSTALLED_PEERD} " in text
    copy = dest / name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_PEERD} ", "ExecStart=/bin/true "))
    return copy


def systemd_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze not found: scripts/bootstrap installs package systemd"
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_is_clean(name: str, tmp_path: Path) -> None:
    copy = verifiable_copy(name, tmp_path)
    result = systemd_analyze("verify", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_reports_mistakes(tmp_path: Path) -> None:
    # Guards the test above: verify must complain, on stderr, about a typo.
    copy = verifiable_copy("peerd.service", tmp_path)
    copy.write_text(copy.read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    result = systemd_analyze("verify", str(copy), cwd=tmp_path)
    assert "WatchdogSecs" in result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_required_settings(name: str) -> None:
    unit = load(name)
    expected = {**COMMON_SERVICE_SETTINGS, **PER_UNIT_SETTINGS[name]}
    for key, want in expected.items():
        assert values(unit, "Service", key) == [want], key
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


@pytest.mark.parametrize("name", UNITS)
def test_stop_timeout_is_the_drains_budget(name: str) -> None:
    # systemd SIGKILLs after TimeoutStopSec: it must cover the whole drain (every step's
    # bound) and the exit, computed from the default config, and the comment must say so.
    (timeout,) = values(load(name), "Service", "TimeoutStopSec")
    assert int(timeout) == stop_timeout(Config())
    assert drain_budget(Config()).total + EXIT_MARGIN <= int(timeout)
    assert f"{timeout} s with the default config" in (UNIT_DIR / name).read_text()


def test_only_the_contributor_talks_to_docker() -> None:
    contributor, seed = load("peerd.service"), load("peerd-seed.service")
    assert "docker.service" in " ".join(values(contributor, "Unit", "After"))
    assert values(seed, "Service", "SupplementaryGroups") == []
    assert "docker" not in " ".join(v for _, v in seed["Unit"])


def test_contributor_keeps_gpu_devices_reachable() -> None:
    service = load("peerd.service")
    assert values(service, "Service", "MemoryDenyWriteExecute") == []
    assert "char-nvidia-frontend rw" in values(service, "Service", "DeviceAllow")


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_does_not_regress(name: str, tmp_path: Path) -> None:
    verifiable_copy(name, tmp_path)
    result = systemd_analyze("security", "--offline=yes", "--no-pager", name, cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE[name]
