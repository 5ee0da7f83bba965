"""peerd.config: loading, defaults and refusals of config.toml."""

import tomllib
from pathlib import Path

import pytest

from peerd.config import DEFAULT_CONFIG_TEXT, Config, load, parse, resolve_home
from peerd.errors import ConfigError


def test_commented_default_file_equals_builtin_defaults(tmp_path: Path) -> None:
    data = tomllib.loads(DEFAULT_CONFIG_TEXT)
    assert parse(data, home=tmp_path, source="x") == Config(home=tmp_path)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path) == Config(home=tmp_path)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[node]\nrole = 'boss'\n", "node.role"),
        ("[node]\nlisten = 5\n", "node.listen"),
        ("[limits]\ntmpfs = 'lots'\n", "limits.tmpfs"),
        ("[policy]\nmax_timeout = 'soon'\n", "policy.max_timeout"),
        ("[policy]\nallow_network = 'yes'\n", "policy.allow_network"),
        ("[nodes]\nrole = 'seed'\n", "[nodes]"),
        ("[node]\nrol = 'seed'\n", "node.rol"),
        ("[network]\nadvert_ttl = '10s'\n", "network.advert_ttl"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    message = str(info.value)
    assert needle in message
    assert str(tmp_path / "config.toml") in message


def test_values_parse_units(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "[limits]\ntmpfs = '128M'\n[policy]\nmax_timeout = '2h'\nimages = 'busybox*'\n"
    )
    config = load(tmp_path)
    assert config.limits.tmpfs == 128 << 20
    assert config.policy.max_timeout == 7200.0
    assert config.policy.images == ("busybox*",)


def test_home_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEERD_HOME", str(tmp_path / "env"))
    assert resolve_home(None) == tmp_path / "env"
    assert resolve_home(str(tmp_path / "flag")) == tmp_path / "flag"


def test_control_path_prefers_runtime_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert Config(home=tmp_path).control_path == tmp_path / "control.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/peerd")
    assert Config(home=tmp_path).control_path == Path("/run/peerd/control.sock")
