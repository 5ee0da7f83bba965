"""An image as job data: the manifest's shape and the config that names the image (protocol.imagelayout)."""

from __future__ import annotations

import hashlib
import json

import pytest

from protocol.imagelayout import (
    ImageLayoutError,
    chain_ids,
    check_config,
    check_layout,
    diff_ids,
    image_id_of,
    layer_path,
    load_manifest_json,
)
from protocol.manifest import DEFAULT_CHUNK_SIZE, FileEntry, Manifest

CONFIG = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]}}).encode()


def entry(path: str, size: int = 10) -> FileEntry:
    return FileEntry(path, 0o644, size, (hashlib.sha256(path.encode()).digest(),))


def image(*paths: str) -> Manifest:
    return Manifest(DEFAULT_CHUNK_SIZE, tuple(entry(p) for p in paths))


def test_an_image_is_its_config_then_its_layers_in_order() -> None:
    assert check_layout(image("config.json", layer_path(0), layer_path(1))) == 2
    assert check_layout(image("config.json")) == 0


@pytest.mark.parametrize("paths", [
    (),
    (layer_path(0),),  # no config
    ("config.json", layer_path(1)),  # a gap
    ("config.json", layer_path(0), "layers/extra.tar"),
    ("config.json", "etc/passwd"),
])
def test_any_other_shape_is_refused(paths: tuple[str, ...]) -> None:
    with pytest.raises(ImageLayoutError):
        check_layout(image(*paths))


def test_the_config_must_hash_to_the_leased_id_and_list_as_many_layers() -> None:
    check_config(CONFIG, image_id_of(CONFIG), 2)
    with pytest.raises(ImageLayoutError) as wrong_id:
        check_config(CONFIG, "sha256:" + "0" * 64, 2)
    assert wrong_id.value.code == "image_mismatch"
    with pytest.raises(ImageLayoutError):
        check_config(CONFIG, image_id_of(CONFIG), 3)


@pytest.mark.parametrize("config", [b"not json", b"[]", b'{"rootfs": {}}', b'{"rootfs": {"diff_ids": [1]}}'])
def test_a_config_without_layer_digests_is_refused(config: bytes) -> None:
    with pytest.raises(ImageLayoutError):
        diff_ids(config)


def test_the_load_manifest_names_the_files_docker_load_reads() -> None:
    [entry_] = json.loads(load_manifest_json(2, "peerd-received:x"))
    assert entry_ == {"Config": "config.json", "RepoTags": ["peerd-received:x"],
                      "Layers": ["layers/0000.tar", "layers/0001.tar"]}


def test_chain_ids_follow_dockers_rule() -> None:
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids((a,)) == (a,)
    assert chain_ids((a, b, c)) == (a, ab, "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest())
    assert chain_ids(()) == ()
