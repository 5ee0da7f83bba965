"""peerd.config: loading, defaults and refusals of config.toml."""

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from peerd.config import DEFAULT_CONFIG_TEXT, SCHEMA, Config, load, parse
from peerd.errors import ConfigError
from peerd.home import resolve_home


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


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[policy]\nmax_timeout = '40d'\n", "policy.max_timeout"),
        ("[policy]\nmax_timeout = 0\n", "policy.max_timeout"),
        ("[pricing]\ncpu_hour = inf\n", "pricing.cpu_hour"),
        ("[pricing]\ngpu_hour = nan\n", "pricing.gpu_hour"),
        ("[pricing]\ncpu_hour = 1e13\n", "pricing.cpu_hour"),
        ("[resources]\ncpus = nan\n", "resources.cpus"),
        ("[resources]\ncpus = 5000\n", "resources.cpus"),
        ("[resources]\nmemory = '9999999999999999999999999999P'\n", "resources.memory"),
        ("[resources]\nmemory = 99999999999999999999\n", "resources.memory"),
        ("[limits]\nlog_limit = '0'\n", "limits.log_limit"),
        ("[limits]\nlog_limit = '8M'\n", "limits.log_limit"),  # two tails would not fit a frame
        ("[limits]\npids = 0\n", "limits.pids"),
        ("[limits]\ntmpfs = 0\n", "limits.tmpfs"),  # tmpfs takes size=0 as unlimited
        ("[limits]\nstop_grace = '1e400s'\n", "limits.stop_grace"),
        ("[network]\nkeepalive = 0\n", "network.keepalive"),
        ("[policy]\nmax_concurrent = 0\n", "policy.max_concurrent"),
        ("[node]\nlog_level = 'loud'\n", "node.log_level"),
        ("[requester]\nmax_attempts = 0\n", "requester.max_attempts"),
    ],
)
def test_values_the_protocol_cannot_carry_are_refused(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert needle in str(info.value)
    assert str(tmp_path / "config.toml") in str(info.value)


def test_non_utf8_byte_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"[node]\nrole = \"prov\xffider\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(tmp_path)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("x = " + "[" * 100_000)
    with pytest.raises(ConfigError):
        load(tmp_path)


_SCHEMA_WORDS = [name for section, (_cls, keys) in SCHEMA.items() for name in (section, *keys)]
_toml_values = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.text(max_size=12),
    st.sampled_from(["'40d'", "'0'", "'8M'", "'1e400s'", "'10s'", "'64M'", "nan", "inf", "-inf", "[]"]),
)


@st.composite
def _tomlish(draw: st.DrawFn) -> bytes:
    """Text shaped like a config: known sections and keys with random values, plus noise."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.sampled_from(list(SCHEMA)))
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(_SCHEMA_WORDS), max_size=4, unique=True)):
            value = draw(_toml_values)
            literal = value if isinstance(value, str) and draw(st.booleans()) else repr(value)
            lines.append(f"{key} = {literal}")
        if draw(st.booleans()):
            lines.append(draw(st.text(max_size=20)))
    text = "\n".join(lines).encode("utf-8", "surrogatepass")
    return text + draw(st.binary(max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), _tomlish()))
def test_any_bytes_give_a_config_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "config.toml").write_bytes(data)
    try:
        config = load(tmp_path)
    except ConfigError:
        return
    assert isinstance(config, Config)
