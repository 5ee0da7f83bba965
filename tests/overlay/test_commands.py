"""What ``wg`` and ``ip`` are asked for one overlay, and the spec checks that guard those command lines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from peerd.executor.contract import OverlayPeer, OverlaySpec
from peerd.overlay.commands import check_spec, inside_script, node_prefix, tunnel_name, wg_set
from peerd.overlay.errors import OverlayError
from peerd.overlay.host import Backend, probe
from peerd.overlay.keys import generate_keys

A, B = generate_keys(), generate_keys()


def spec(**overrides: object) -> OverlaySpec:
    base = OverlaySpec(address="10.99.0.1/24", private_key=A.private_key, listen_port=51820,
                       peers=(OverlayPeer(B.public_key, "127.0.0.1:51821", "10.99.0.2"),))
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_names_fit_the_kernel_limit_and_carry_the_node() -> None:
    name = tunnel_name("node-a", "task-1")
    assert len(name) == 15 and name.startswith(node_prefix("node-a"))
    assert not name.startswith(node_prefix("node-b"))
    assert tunnel_name("node-a", "task-2") != name


def test_wg_set_takes_the_key_on_stdin_and_one_slash_32_per_peer() -> None:
    argv, stdin = wg_set("pwabc", spec())
    assert A.private_key not in " ".join(argv)
    assert stdin == A.private_key.encode() + b"\n"
    assert argv[:7] == ["wg", "set", "pwabc", "private-key", "/dev/stdin", "listen-port", "51820"]
    assert argv[7:] == ["peer", B.public_key, "endpoint", "127.0.0.1:51821", "allowed-ips", "10.99.0.2/32",
                        "persistent-keepalive", "25"]


def test_inside_the_namespace_the_interface_is_renamed_addressed_and_up() -> None:
    assert inside_script("pwabc", spec()).splitlines() == [
        "link set dev pwabc name peerd0", "address add 10.99.0.1/24 dev peerd0", "link set dev peerd0 mtu 1420 up",
    ]


@pytest.mark.parametrize("overrides", [
    {"interface": "peerd0\nlink del lo"}, {"interface": "x" * 16}, {"address": "10.99.0.1"[:4]},
    {"address": "fd00::1/64"}, {"private_key": "not base64!"}, {"private_key": B.public_key[:-4] + "===="},
    {"listen_port": 0}, {"listen_port": 70000},
    {"peers": (OverlayPeer("short", "127.0.0.1:1", "10.99.0.2"),)},
    {"peers": (OverlayPeer(B.public_key, "127.0.0.1", "10.99.0.2"),)},
    {"peers": (OverlayPeer(B.public_key, "a b:1", "10.99.0.2"),)},
    {"peers": (OverlayPeer(B.public_key, "127.0.0.1:1", "10.98.0.2"),)},
    {"peers": (OverlayPeer(B.public_key, "127.0.0.1:1", "10.99.0.1"),)},
    {"peers": (OverlayPeer(B.public_key, "127.0.0.1:1", "10.99.0.2 allowed-ips 0.0.0.0/0"),)},
])
def test_unusable_specs_are_refused_before_any_command(overrides: dict[str, object]) -> None:
    with pytest.raises(OverlayError):
        check_spec(spec(**overrides))


def test_the_repr_never_shows_the_private_key() -> None:
    assert A.private_key not in repr(spec())


def test_probe_names_what_is_missing(tmp_path: Path) -> None:
    found = probe(tun=tmp_path / "no-tun", kernel_module=tmp_path / "no-module")
    if found.ok:
        pytest.fail(f"no tun and no module, yet {found}")
    assert "tun" in found.detail or "missing" in found.detail or "wireguard-go" in found.detail
    with_module = probe(tun=tmp_path / "no-tun", kernel_module=tmp_path)
    assert with_module.backend in (Backend.KERNEL, None)
