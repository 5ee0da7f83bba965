"""An image as job data: which manifest describes a container image. Pure.

An image travels as a manifest (``protocol.manifest``) with exactly these files:

    config.json        the image config, byte for byte (its SHA-256 is the image id)
    layers/0000.tar    the first layer's uncompressed tar (its SHA-256 is the config's
    layers/0001.tar    rootfs.diff_ids[i])
    ...

one layer file per ``rootfs.diff_ids`` entry, in that order. Each file is cut
into chunks like any job data, so a layer two images share is the same file
with the same chunks: a provider that holds one image's chunks fetches only the
other's new layers. ``check_layout`` says whether a manifest has this shape;
``check_config`` whether config bytes are the image the lease names (their
digest) with as many layers as the manifest. ``load_manifest_json`` is the
``manifest.json`` of a ``docker save`` archive made of these files, which is
what a provider hands ``docker load``.
"""

from __future__ import annotations

import hashlib
import json

from .errors import DecodeError
from .manifest import Manifest

CONFIG_PATH = "config.json"
LAYER_DIR = "layers"
MAX_LAYERS = 1024
MAX_CONFIG_BYTES = 4 << 20  # a config is small; one chunk at most


class ImageLayoutError(DecodeError):
    """An image manifest or config is not what the lease names; ``code`` says how."""

    code = "bad_image"


def layer_path(index: int) -> str:
    return f"{LAYER_DIR}/{index:04d}.tar"


def check_layout(manifest: Manifest) -> int:
    """The number of layers of an image manifest; ImageLayoutError if it is not one."""
    paths = [entry.path for entry in manifest.files]
    if not paths or paths[0] != CONFIG_PATH:
        raise ImageLayoutError(f"an image manifest starts with {CONFIG_PATH!r}, this one with {paths[:1]}")
    layers = len(paths) - 1
    if layers > MAX_LAYERS:
        raise ImageLayoutError(f"an image has at most {MAX_LAYERS} layers, this one {layers}")
    expected = [CONFIG_PATH, *(layer_path(i) for i in range(layers))]
    if paths != expected:
        raise ImageLayoutError(f"an image manifest lists {CONFIG_PATH!r} and layers/NNNN.tar in order, not {paths}")
    if manifest.files[0].size > MAX_CONFIG_BYTES:
        raise ImageLayoutError(f"an image config is at most {MAX_CONFIG_BYTES} bytes")
    return layers


def image_id_of(config: bytes) -> str:
    """The image id of a config: ``"sha256:"`` + the hex digest of its exact bytes."""
    return "sha256:" + hashlib.sha256(config).hexdigest()


def diff_ids(config: bytes) -> tuple[str, ...]:
    """The config's ``rootfs.diff_ids`` (the layers' digests); ImageLayoutError if absent or malformed."""
    try:
        parsed = json.loads(config)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageLayoutError(f"the image config is not JSON: {exc}") from exc
    rootfs = parsed.get("rootfs") if isinstance(parsed, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_LAYERS:
        raise ImageLayoutError("the image config has no valid rootfs.diff_ids")
    return tuple(ids)


def chain_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    """The chain id of each layer (the layer with all below it), as dockerd names a layer it holds:
    the first layer's is its diff id, each next one ``sha256(<chain below> + " " + <diff id>)``."""
    chains: list[str] = []
    for diff_id in ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return tuple(chains)


def check_config(config: bytes, image_id: str, layers: int) -> None:
    """The config is the image ``image_id`` names, with ``layers`` layers; ImageLayoutError if not."""
    actual = image_id_of(config)
    if actual != image_id:
        raise ImageLayoutError(f"the image config is {actual}, the lease names {image_id}", code="image_mismatch")
    count = len(diff_ids(config))
    if count != layers:
        raise ImageLayoutError(f"the image config lists {count} layers, the manifest {layers}")


def load_manifest_json(layers: int, repo_tag: str) -> bytes:
    """``manifest.json`` of a ``docker save`` archive of these files, tagged ``repo_tag``."""
    entry = {"Config": CONFIG_PATH, "RepoTags": [repo_tag], "Layers": [layer_path(i) for i in range(layers)]}
    return json.dumps([entry], separators=(",", ":")).encode()


__all__ = [
    "CONFIG_PATH",
    "MAX_LAYERS",
    "ImageLayoutError",
    "chain_ids",
    "check_config",
    "check_layout",
    "diff_ids",
    "image_id_of",
    "layer_path",
    "load_manifest_json",
]
