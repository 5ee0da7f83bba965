"""peerd.host.identity: the node key on disk (creation, permissions, loading)."""

import os
from pathlib import Path

import pytest

from peerd.host.identity import IdentityError, init_home, load_key
from protocol.peerid import public_key_from_peer_id


def test_init_creates_private_key_and_config(tmp_path: Path) -> None:
    home = tmp_path / "node"
    signer, created = init_home(home)
    assert created
    key = home / "node.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert (home / "config.toml").read_text().startswith("# peerd node configuration")
    assert signer.peer_id.startswith("12D3KooW")
    assert load_key(key).peer_id == signer.peer_id


def test_init_is_idempotent_and_keeps_the_key(tmp_path: Path) -> None:
    first, _ = init_home(tmp_path)
    again, created = init_home(tmp_path)
    assert not created
    assert again.peer_id == first.peer_id


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    init_home(tmp_path)
    os.chmod(tmp_path / "node.key", 0o640)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_key(tmp_path / "node.key")


def test_missing_key_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="peerd init"):
        load_key(tmp_path / "node.key")


def test_peer_id_embeds_the_signing_key(tmp_path: Path) -> None:
    signer, _ = init_home(tmp_path)
    sig = signer.sign(b"hello")
    public_key_from_peer_id(signer.peer_id).verify(sig, b"hello")
