"""Images over the network: real `peerd run` processes, two real dockerds.

The provider runs on a dockerd of its own (tests/integration/dockerd.py), so
it has never seen any image. An image built only in the requester's dockerd (the
test busybox plus a file of random content) runs there: the job's output is the
file's digest, and the provider's dockerd then holds an image with the same id.
A second image on the same base moves only its new layer. A provider whose
policy pins other image ids refuses with a signed reason before any byte moves.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from peerd.devnet import DevNet, NodeProc
from tests.integration.dockerd import BASE, SECRET_BYTES, Built, Dockerd, build_image, second_dockerd

pytestmark = [pytest.mark.docker, pytest.mark.integration]



class ImageNet(DevNet):
    """The devnet, with providers on the second engine, and image pins per node."""

    def __init__(self, docker_url: str, pins: dict[str, str] | None = None) -> None:
        super().__init__()
        self.docker_url = docker_url
        self.pins = pins or {}  # node name -> the one image id its policy allows

    def config_text(self, node: NodeProc) -> str:
        text = super().config_text(node)
        if node.name in self.pins:  # the devnet's config has a [policy] table already
            text = text.replace("[policy]\n", f'[policy]\nimage_ids = ["{self.pins[node.name]}"]\n', 1)
        if node.role == "provider":
            text += f'\n[resources]\ndocker_url = "{self.docker_url}"\n'
        return text


@pytest.fixture(scope="module")
def engine() -> Iterator[Dockerd]:
    with second_dockerd() as dockerd:
        yield dockerd


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Built, Built]]:
    tag = secrets.token_hex(4)
    root = tmp_path_factory.mktemp("images")
    built = (build_image(root / "one", f"peerd-test/carried-{tag}:one", 1),
             build_image(root / "two", f"peerd-test/carried-{tag}:two", 2))
    try:
        yield built
    finally:
        subprocess.run(["docker", "rmi", "-f", *(b.ref for b in built)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def net(engine: Dockerd) -> Iterator[DevNet]:
    with ImageNet(engine.url) as devnet:
        devnet.add_seed()
        devnet.add("provider", "provider")
        devnet.add("requester", "requester")
        devnet.wait_adverts("requester", ["provider"])
        yield devnet


def counter(node: NodeProc, name: str) -> int:
    status = node.status()
    assert isinstance(status["counters"], dict)
    return int(status["counters"][name])


def submit(node: NodeProc, image: str, *args: str) -> tuple[int, dict[str, object], str]:
    out = node.peerd("submit", "--image", image, "--wait", "--json", *args)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr


def test_an_image_built_only_here_runs_on_a_provider_that_never_saw_it(
    net: DevNet, engine: Dockerd, images: tuple[Built, Built],
) -> None:
    one, _ = images
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    assert one.image_id not in engine.image_ids()
    before = counter(provider, "data.images_fetched_bytes")
    # no flag: the requester's dockerd holds it and no registry does, so it travels with the job
    code, view, err = submit(requester, one.ref, "--", "sha256sum", "/secret.bin")
    assert code == 0, (view, err, provider.log_tail())
    assert view["state"] == "succeeded"
    assert str(view["stdout"]).split()[0] == one.secret_sha256
    assert one.image_id in engine.image_ids()
    moved = counter(provider, "data.images_fetched_bytes") - before
    print(f"first image: {moved} bytes fetched by the provider")
    assert moved >= SECRET_BYTES

    # the same image again: already in the provider's dockerd, nothing moves
    code, view, err = submit(requester, one.ref, "--image-from-requester", "--", "true")
    assert code == 0, (view, err)
    assert counter(provider, "data.images_fetched_bytes") - before == moved


def test_a_second_image_on_the_same_base_moves_only_its_new_layer(
    net: DevNet, engine: Dockerd, images: tuple[Built, Built],
) -> None:
    one, two = images
    requester, provider = net.nodes["requester"], net.nodes["provider"]
    if one.image_id not in engine.image_ids():  # run alone: the first image goes over first
        assert submit(requester, one.ref, "--", "true")[0] == 0
    before = counter(provider, "data.images_fetched_bytes")
    code, view, err = submit(requester, two.ref, "--image-from-requester", "--", "sha256sum", "/secret.bin")
    assert code == 0, (view, err, provider.log_tail())
    assert str(view["stdout"]).split()[0] == two.secret_sha256
    moved = counter(provider, "data.images_fetched_bytes") - before
    base = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", BASE], capture_output=True,
                              text=True, check=True).stdout)
    print(f"second image: {moved} bytes fetched (its new layer: {two.layer_bytes}, the shared base: {base})")
    assert SECRET_BYTES <= moved <= two.layer_bytes + (64 << 10)  # the layer, its config, the manifest
    assert two.image_id in engine.image_ids()


def test_a_provider_pinning_other_image_ids_refuses_before_any_byte_moves(
    engine: Dockerd, images: tuple[Built, Built],
) -> None:
    one, _ = images
    with ImageNet(engine.url, pins={"strict": "sha256:" + "0" * 64}) as devnet:
        devnet.add_seed()
        strict = devnet.add("strict", "provider")
        requester = devnet.add("requester", "requester")
        devnet.wait_adverts("requester", ["strict"])
        code, view, err = submit(requester, one.ref, "--", "true")
        assert code == 1, (view, err)
        assert view["state"] == "not_placed"
        attempts = view["attempts"]
        assert isinstance(attempts, list) and attempts
        assert all(a["outcome"] == "rejected" and a["reason"] == "image_not_allowed" for a in attempts), attempts
        assert "pinned" in str(view["detail"])
        assert counter(strict, "data.images_fetched_bytes") == 0
        assert counter(requester, "data.served_bytes") == 0

