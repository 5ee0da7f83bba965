"""The node's identity: an Ed25519 key file in its home, and ``peerd init``.

The key is stored as unencrypted PKCS#8 PEM with mode 0600 and refused when
group or world can read it. Its libp2p peer ID is derived by
``protocol.peerid``; the p2p adapter turns the same key into a libp2p key pair.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerd.config import DEFAULT_CONFIG_TEXT, ConfigError
from peerd.home import CONFIG_NAME
from protocol.signing import Signer

KEY_NAME = "node.key"


class IdentityError(ConfigError):
    """The key file is missing, unreadable, unsafe or not an Ed25519 key."""


def create_key(path: Path) -> Signer:
    """Write a new key (0600, never overwriting) and return its signer."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise IdentityError(f"{path}: a key already exists; not overwriting it") from exc
    except OSError as exc:
        raise IdentityError(f"{path}: cannot create key: {exc}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return Signer(key)


def load_key(path: Path) -> Signer:
    """Read the key; refuse it if group or others may read it."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise IdentityError(f"{path}: no key; run `peerd init` first") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path}: key is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"{path}: cannot load key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path}: not an Ed25519 key")
    return Signer(key)


def init_home(home: Path) -> tuple[Signer, bool]:
    """Create the home, its key and a commented config; idempotent.

    Returns the signer and whether anything was created.
    """
    created = False
    try:
        home.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"{home}: cannot create home: {exc}") from exc
    key_path = home / KEY_NAME
    if key_path.exists():
        signer = load_key(key_path)
    else:
        signer = create_key(key_path)
        created = True
    config_path = home / CONFIG_NAME
    if not config_path.exists():
        config_path.write_text(DEFAULT_CONFIG_TEXT)
        created = True
    return signer, created
