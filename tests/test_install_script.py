"""scripts/install: its plans (--dry-run), and a real uninstall into a --root tree.

A real install needs `peerd init` and a full pip install from PyPI; that is
exercised by hand (see the script's header), not here. The dry runs use --root
with an empty tree so the plan does not depend on this host's users and files.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install"
OWN_SCRIPTS = ["scripts/install", "scripts/bootstrap", "scripts/check-fresh-debian", ".ci/run"]


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), *args], capture_output=True, text=True, timeout=120, check=False
    )


def actions(output: str) -> list[str]:
    """The '+ command' lines of the plan, without the '+ '."""
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_root(root: Path, *, with_peerd_user: bool) -> None:
    (root / "etc").mkdir(parents=True)
    passwd = "root:x:0:0:root:/root:/bin/bash\n"
    group = "root:x:0:\ndocker:x:998:\n"
    if with_peerd_user:
        passwd += "peerd:x:999:997:peerd daemon:/var/lib/peerd:/usr/sbin/nologin\n"
        group = "root:x:0:\ndocker:x:998:peerd\npeerd:x:997:\n"
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
        os.chmod(root / "etc" / name, 0o640)


@pytest.mark.parametrize("script", OWN_SCRIPTS)
def test_bash_syntax(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_dry_run_contributor_plan(tmp_path: Path) -> None:
    result = run_install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    r = str(tmp_path)
    assert actions(result.stdout) == [
        f"groupadd --prefix {r} --system peerd",
        f"useradd --prefix {r} --system --gid peerd --home-dir /var/lib/peerd --no-create-home"
        " --shell /usr/sbin/nologin --comment peerd daemon peerd",
        f"usermod --prefix {r} --append --groups docker peerd",
        f"install -d -m 0755 {r}/opt/peerd",
        f"python3 -m venv {r}/opt/peerd/venv",
        f"{r}/opt/peerd/venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip wheel",
        f"{r}/opt/peerd/venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade {REPO}",
        f"install -d -m 0750 {r}/var/lib/peerd",
        f"install -d -m 0755 {r}/etc/peerd",
        f"chown peerd:peerd {r}/var/lib/peerd",
        f"{r}/opt/peerd/venv/bin/peerd init --home {r}/var/lib/peerd",
        f"write_unit {REPO}/systemd/peerd.service {r}/etc/systemd/system/peerd.service",
        f"systemctl --root={r} enable peerd.service",
    ]
    assert tree(tmp_path) == []  # a dry run changes nothing


def test_dry_run_seed_plan(tmp_path: Path) -> None:
    result = run_install("--dry-run", "--seed", "--root", str(tmp_path), "--prefix", "/srv/peerd")
    assert result.returncode == 0, result.stderr
    plan = actions(result.stdout)
    r = str(tmp_path)
    assert f"write_unit {REPO}/systemd/peerd-seed.service {r}/etc/systemd/system/peerd-seed.service" in plan
    assert f"systemctl --root={r} enable peerd-seed.service" in plan
    assert f"python3 -m venv {r}/srv/peerd/venv" in plan
    assert not [a for a in plan if "docker" in a or "peerd.service" in a]
    assert tree(tmp_path) == []


def test_dry_run_on_this_host_plans_systemd_and_init_as_peerd() -> None:
    result = run_install("--dry-run")
    assert result.returncode == 0, result.stderr
    plan = actions(result.stdout)
    assert f"/opt/peerd/venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade {REPO}" in plan
    if not any(a.startswith("= node key present") for a in result.stdout.splitlines()):
        assert "runuser -u peerd -- /opt/peerd/venv/bin/peerd init --home /var/lib/peerd" in plan
    if Path("/run/systemd/system").is_dir():
        assert plan[-2:] == ["systemctl daemon-reload", "systemctl enable --now peerd.service"]
    else:
        assert "=   systemctl daemon-reload && systemctl enable --now peerd.service" in result.stdout


def test_existing_key_is_not_reinitialised(tmp_path: Path) -> None:
    make_root(tmp_path, with_peerd_user=True)
    (tmp_path / "var/lib/peerd").mkdir(parents=True)
    (tmp_path / "var/lib/peerd/node.key").write_text("secret")
    result = run_install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    plan = actions(result.stdout)
    assert not [a for a in plan if " init " in a or a.startswith(("groupadd", "useradd", "usermod"))]
    assert "= user peerd is in group docker" in result.stdout


def installed_tree(root: Path) -> None:
    make_root(root, with_peerd_user=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "peerd.service").write_text((REPO / "systemd/peerd.service").read_text())
    (root / "opt/peerd/venv/bin").mkdir(parents=True)
    (root / "var/lib/peerd").mkdir(parents=True)
    (root / "var/lib/peerd/node.key").write_text("secret")
    (root / "etc/peerd").mkdir()


def test_dry_run_uninstall_plan(tmp_path: Path) -> None:
    installed_tree(tmp_path)
    before = tree(tmp_path)
    result = run_install("--dry-run", "--uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    r = str(tmp_path)
    assert actions(result.stdout) == [
        f"systemctl --root={r} disable peerd.service",
        f"rm -f {r}/etc/systemd/system/peerd.service",
        f"rm -rf {r}/opt/peerd/venv",
        f"rmdir --ignore-fail-on-non-empty {r}/opt/peerd",
    ]
    assert "= peerd-seed.service not installed" in result.stdout
    assert f"= kept {r}/var/lib/peerd" in result.stdout
    assert tree(tmp_path) == before


def test_uninstall_into_root_keeps_state_then_purge_removes_it(tmp_path: Path) -> None:
    # Runs the real script (as root, like CI): only --root keeps it off this host.
    installed_tree(tmp_path)
    subprocess.run(
        ["systemctl", f"--root={tmp_path}", "enable", "peerd.service"], check=True, capture_output=True
    )
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants/peerd.service").is_symlink()

    result = run_install("--uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "etc/systemd/system/peerd.service").exists()
    assert not (tmp_path / "etc/systemd/system/multi-user.target.wants/peerd.service").is_symlink()
    assert not (tmp_path / "opt/peerd").exists()
    assert (tmp_path / "var/lib/peerd/node.key").read_text() == "secret"

    result = run_install("--uninstall", "--purge", "--root", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "var/lib/peerd").exists()
    assert not (tmp_path / "etc/peerd").exists()
    assert "peerd" not in (tmp_path / "etc/passwd").read_text()
    assert "peerd:" not in (tmp_path / "etc/group").read_text()


def test_bad_arguments_are_refused() -> None:
    assert run_install("--bogus").returncode != 0
    assert run_install("--dry-run", "--purge").returncode != 0
    assert run_install("--dry-run", "--prefix", "relative/dir").returncode != 0
