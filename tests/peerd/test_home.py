"""peerd.home: the control socket found from one key of the config, as the full Config finds it."""

from pathlib import Path

import pytest

from peerd.config import Config, load
from peerd.errors import ConfigError
from peerd.home import DEFAULT_CONTROL_SOCKET, control_socket_path


@pytest.fixture(autouse=True)
def no_runtime_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)


@pytest.mark.parametrize("text", [
    None,  # no config.toml
    "",
    "[node]\nrole = 'requester'\n",
    "[node]\ncontrol_socket = '/run/x/c.sock'\n",
    "node.control_socket = '/elsewhere.sock'\n",
    "[node]\n\"control_socket\" = 'quoted.sock'\n",
])
def test_the_light_lookup_agrees_with_the_config(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / "config.toml").write_text(text)
    assert control_socket_path(tmp_path) == load(tmp_path).control_path


def test_runtime_directory_applies_to_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/peerd:/other")
    assert control_socket_path(tmp_path) == Path("/run/peerd/control.sock") == Config(home=tmp_path).control_path


def test_one_default(tmp_path: Path) -> None:
    assert Config().node.control_socket == DEFAULT_CONTROL_SOCKET


def test_the_rest_of_the_file_is_not_checked_here(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[node]\ncontrol_socket = '/c.sock'\n[nonsense]\nx = 1\n")
    assert control_socket_path(tmp_path) == Path("/c.sock")
    with pytest.raises(ConfigError, match="unknown section"):
        load(tmp_path)


@pytest.mark.parametrize(("text", "needle"), [
    ("[node\n", "not valid TOML"),
    ("node = 3\n", "[node] must be a table"),
    ("[node]\ncontrol_socket = 3\n", "node.control_socket: expected a string"),
])
def test_unusable_files_raise_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match="config.toml") as raised:
        control_socket_path(tmp_path)
    assert needle in str(raised.value)


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"[node]\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        control_socket_path(tmp_path)
