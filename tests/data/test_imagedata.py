"""Images as job data, in process: real dockerds (the host's, and a second, empty one), real chunk stores.

The requester's ``export_image`` streams ``docker save`` into its store; the
provider's ``ProviderImages`` fetches from it (blob streams in memory), loads
the image into the empty engine, refuses content whose config is not the
leased id before any layer moves, refuses a layer swapped for another (dockerd
checks each layer against the config), and removes received images least
recently used first, never one in use.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from peerd.data import imagereceive
from peerd.data.blobstore import ChunkStore
from peerd.data.imagedata import (
    ImageError,
    ImageMismatch,
    RequesterImages,
    export_image,
    export_key,
    pin_for_task,
)
from peerd.data.imagereceive import ImageSettings, ProviderImages
from peerd.data.jobdata import load_manifest, parse_digest
from peerd.executor.engine import Engine
from protocol.blobxfer import VerifiedChunk
from protocol.manifest import Manifest, encode_manifest, manifest_id
from protocol.messages import ImageContent, JobSpec, LeaseTerms
from tests.data.test_jobdata import PROVIDER, REQUESTER, Opener
from tests.integration.dockerd import Built, Dockerd, build_image, second_dockerd

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine2() -> Iterator[Dockerd]:
    with second_dockerd() as dockerd:
        yield dockerd


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Built, Built]]:
    tag, root = secrets.token_hex(4), tmp_path_factory.mktemp("ctx")
    pair = (build_image(root / "a", f"peerd-test/imagedata-{tag}:a", 11),
            build_image(root / "b", f"peerd-test/imagedata-{tag}:b", 12))
    yield pair
    subprocess.run(["docker", "rmi", "-f", *(b.ref for b in pair)], capture_output=True, check=False)


@pytest.fixture
async def engines(engine2: Dockerd) -> AsyncIterator[tuple[Engine, Engine]]:
    here, there = await Engine.connect(), await Engine.connect(engine2.url)
    yield here, there
    here.close()
    there.close()


def terms_for(task_id: str, content: ImageContent) -> LeaseTerms:
    spec = JobSpec(image="peerd-test/whatever:1", command=("true",), timeout=30.0, image_content=content)
    return LeaseTerms(task_id=task_id, requester=REQUESTER, provider=PROVIDER, spec=spec, price=1.0, gpus=(),
                      issued_at=time.time(), expires_at=time.time() + 90.0)


def provider(engine: Engine, store: ChunkStore, opener: Opener, tmp_path: Path) -> ProviderImages:
    return ProviderImages(lambda: engine, store, opener, ImageSettings(marks_dir=tmp_path / "marks"))


async def exported(engine: Engine, ref: str, tmp_path: Path) -> tuple[ChunkStore, ChunkStore, ImageContent, Manifest]:
    """The requester's store with ``ref`` exported and pinned for task t1, and an empty provider store."""
    theirs = await ChunkStore.open(tmp_path / "req")
    ours = await ChunkStore.open(tmp_path / "prov")
    content, manifest = await export_image(engine, ref, theirs)
    await pin_for_task(theirs, "t1", content)
    return theirs, ours, content, manifest


async def test_an_exported_image_loads_on_an_empty_engine_with_the_same_id(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, _ = built
    theirs = await ChunkStore.open(tmp_path / "req")
    ours = await ChunkStore.open(tmp_path / "prov", 64 << 20)
    content, manifest = await export_image(here, one.ref, theirs)
    assert content.id == one.image_id
    assert [f.path for f in manifest.files] == ["config.json", "layers/0000.tar", "layers/0001.tar"]
    again, _ = await export_image(here, one.ref, theirs)  # reused, not exported again
    assert again == content
    await pin_for_task(theirs, "t1", content)
    async with trio.open_nursery() as nursery:
        images = provider(there, ours, Opener(nursery, theirs), tmp_path)
        moved = await images.ensure(terms_for("t1", content))
        assert moved >= content.size
        assert await there.image_id(content.id) == content.id
        assert content.id in engine2.image_ids()
        assert await images.ensure(terms_for("t2", content)) == 0  # present: nothing moves
        nursery.cancel_scope.cancel()
    await theirs.close()
    await ours.close()


async def test_content_that_is_not_the_leased_image_is_refused_before_its_layers_move(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, two = built
    theirs, ours, content, manifest = await exported(here, one.ref, tmp_path)
    lying = replace(content, id=two.image_id)  # the lease names another image than the content is
    async with trio.open_nursery() as nursery:
        images = provider(there, ours, Opener(nursery, theirs), tmp_path)
        with pytest.raises(ImageMismatch, match="image_mismatch|lease names"):
            await images.ensure(terms_for("t1", lying))
        nursery.cancel_scope.cancel()
    layers = {d for f in manifest.files[1:] for d in f.chunks}
    assert set(await ours.missing(list(layers))) == layers  # not one layer chunk came
    assert two.image_id not in engine2.image_ids()
    await theirs.close()
    await ours.close()


async def test_a_layer_swapped_for_another_is_refused_by_the_load(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, two = built
    theirs = await ChunkStore.open(tmp_path / "req")
    ours = await ChunkStore.open(tmp_path / "prov")
    content, manifest = await export_image(here, one.ref, theirs)
    _, other = await export_image(here, two.ref, theirs)
    # one's config with two's top layer: same shape, every chunk genuine, the wrong content
    swapped = Manifest(manifest.chunk_size, (*manifest.files[:2], replace(other.files[2], path="layers/0001.tar")))
    data = encode_manifest(swapped)
    mid = manifest_id(data)
    await theirs.put(mid, data)
    await theirs.pin("t1", [mid, *swapped.digests()])
    forged = ImageContent(id=content.id, manifest="sha256:" + mid.hex(),
                          size=sum(f.size for f in swapped.files))
    engine2.docker("rmi", "-f", content.id)  # an earlier test may have loaded the genuine image
    assert content.id not in engine2.image_ids()
    async with trio.open_nursery() as nursery:
        images = provider(there, ours, Opener(nursery, theirs), tmp_path)
        with pytest.raises(ImageError, match="diff|layer"):
            await images.ensure(terms_for("t1", forged))
        nursery.cancel_scope.cancel()
    assert content.id not in engine2.image_ids()
    await theirs.close()
    await ours.close()


class Feeding:
    """An engine whose ``load`` counts the archive bytes it hands dockerd."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fed = 0
        self.images: ProviderImages | None = None
        self.counters: dict[str, int] = {}  # the provider's landing counters at the first piece

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    async def load(self, pieces: AsyncIterator[bytes]) -> list[str]:
        async def counted() -> AsyncIterator[bytes]:
            async for piece in pieces:
                if not self.fed and self.images is not None:
                    self.counters = self.images.landing_counters()
                self.fed += len(piece)
                yield piece

        return await self.engine.load(counted())


async def test_layers_stream_into_the_load_as_they_arrive_and_a_lost_chunk_aborts_it(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, _ = built
    theirs, ours, content, manifest = await exported(here, one.ref, tmp_path)
    last = manifest.files[-1].chunks[-1]
    await theirs.release("t1")  # the requester loses the top layer's last chunk
    await theirs.pin("t1", [d for d in [*manifest.digests(), parse_digest(content.manifest)] if d != last])
    await theirs.run_blocking(lambda files: files.path_of(last).unlink())
    await theirs.run_blocking(lambda files: files.get(last))  # the store notices it is gone
    engine2.docker("rmi", "-f", content.id)
    feeding = Feeding(there)
    async with trio.open_nursery() as nursery:
        images = ProviderImages(lambda: feeding, ours, Opener(nursery, theirs),  # type: ignore[arg-type,return-value]
                                ImageSettings(marks_dir=tmp_path / "marks"))
        feeding.images = images
        with pytest.raises(ImageError, match="could not be fetched"):
            await images.ensure(terms_for("t1", content))
        nursery.cancel_scope.cancel()
    assert feeding.fed > manifest.files[0].size + (1 << 20)  # layer bytes reached dockerd before the fetch ended
    assert content.id not in engine2.image_ids()
    layer_bytes = sum(f.size for f in manifest.files[1:])
    assert feeding.counters["data.images_landing"] == 1
    assert feeding.counters["data.images_landing_total"] == layer_bytes
    assert feeding.counters["data.images_landing_bytes"] < layer_bytes
    assert images.landing_counters() == {"data.images_landing": 0, "data.images_landing_bytes": 0,
                                         "data.images_landing_total": 0}
    await theirs.close()
    await ours.close()


async def test_layers_the_engine_holds_are_neither_fetched_nor_fed_to_the_load(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, two = built  # both stand on the same base layer
    theirs = await ChunkStore.open(tmp_path / "req")
    first, _ = await export_image(here, one.ref, theirs)
    second, manifest = await export_image(here, two.ref, theirs)
    await pin_for_task(theirs, "t1", first)
    await pin_for_task(theirs, "t2", second)
    engine2.docker("rmi", "-f", first.id, second.id)
    feeding = Feeding(there)
    async with trio.open_nursery() as nursery:
        opener = Opener(nursery, theirs)
        await provider(there, await ChunkStore.open(tmp_path / "prov1"), opener, tmp_path).ensure(
            terms_for("t1", first))
        ours = await ChunkStore.open(tmp_path / "prov2")  # an empty store: what moves is only what dockerd lacks
        images = ProviderImages(lambda: feeding, ours, opener,  # type: ignore[arg-type,return-value]
                                ImageSettings(marks_dir=tmp_path / "marks"))
        moved = await images.ensure(terms_for("t2", second))
        nursery.cancel_scope.cancel()
    base = manifest.files[1].size
    assert second.id in engine2.image_ids()
    assert moved <= second.size - base + (64 << 10)  # the manifest, the config, the top layer
    assert feeding.fed <= second.size - base + (64 << 10)
    assert set(await ours.missing(manifest.files[1].chunks)) == set(manifest.files[1].chunks)
    await theirs.close()
    await ours.close()


async def test_a_chunk_that_no_longer_matches_its_digest_aborts_the_load(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, _ = built
    theirs, ours, content, manifest = await exported(here, one.ref, tmp_path)
    middle = manifest.files[-1].chunks[len(manifest.files[-1].chunks) // 2]
    data = await theirs.get(middle)
    assert data is not None
    await ours.put(middle, data)  # already here, so not fetched again: then it rots on disk
    await ours.run_blocking(lambda files: files.path_of(middle).write_bytes(b"x" + data[1:]))
    engine2.docker("rmi", "-f", content.id)
    async with trio.open_nursery() as nursery:
        images = provider(there, ours, Opener(nursery, theirs), tmp_path)
        with pytest.raises(ImageMismatch, match="does not match its digest"):
            await images.ensure(terms_for("t1", content))
        nursery.cancel_scope.cancel()
    assert content.id not in engine2.image_ids()
    await theirs.close()
    await ours.close()


async def test_an_export_is_kept_while_a_task_carries_it_and_collectible_after(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], tmp_path: Path,
) -> None:
    here, _ = engines
    one, _ = built
    store = await ChunkStore.open(tmp_path / "req")

    async def source() -> Engine:
        return here

    images = RequesterImages(source, store)
    spec = JobSpec(image=one.ref, command=("true",), timeout=30.0)
    first = await images.carry("t1", spec)
    second = await images.carry("t2", spec)  # the same export, reused
    assert first.image_content == second.image_content and images.exported == 1
    assert first.image_content is not None
    digests = (await load_manifest(store, parse_digest(first.image_content.manifest) or b"")).digests()
    assert images.carrying == {one.image_id: {"t1", "t2"}}
    await images.task_done("t1")
    await store.release("t1")
    assert await store.pinned(export_key(one.image_id))  # t2 is live: kept
    await store.gc()
    assert not await store.missing(digests)
    await store.release("t2")  # the task's own pins go first (RequesterData.release_when_final)
    await images.task_done("t2")
    assert not await store.pinned(export_key(one.image_id)) and images.released == 1
    await images.carry("t3", spec)  # still whole: reused
    assert images.exported == 1 and await store.pinned(export_key(one.image_id))
    await store.release("t3")
    await images.task_done("t3")
    await store.gc()  # what the store does when it needs room: the unreferenced export goes
    assert set(await store.missing(digests)) == set(digests)
    await images.carry("t4", spec)  # exported again
    assert images.exported == 2 and not await store.missing(digests)
    await store.close()


async def test_received_images_make_room_least_recently_used_first_never_one_in_use(
    engines: tuple[Engine, Engine], built: tuple[Built, Built], engine2: Dockerd, tmp_path: Path,
) -> None:
    here, there = engines
    one, two = built
    theirs = await ChunkStore.open(tmp_path / "req")
    ours = await ChunkStore.open(tmp_path / "prov", 12 << 20)
    async with trio.open_nursery() as nursery:
        images = provider(there, ours, Opener(nursery, theirs), tmp_path)
        for i, ref in enumerate((one.ref, two.ref)):
            content, _ = await export_image(here, ref, theirs)
            await pin_for_task(theirs, f"t{i}", content)
            await images.ensure(terms_for(f"t{i}", content))
        used = [image_id for _, image_id, _ in await images.received()]
        assert used[-2:] == [one.image_id, two.image_id]  # two was used last
        images.use(one.image_id)  # a job runs on the older one
        removed = await images.collect(10 << 20)
        assert removed and one.image_id not in removed
        assert two.image_id in removed and two.image_id not in engine2.image_ids()
        assert one.image_id in engine2.image_ids()
        images.done(one.image_id)
        assert one.image_id in await images.collect(10 << 20)
        assert one.image_id not in engine2.image_ids()
        nursery.cancel_scope.cancel()
    await theirs.close()
    await ours.close()


def test_landed_chunks_go_to_docker_load_from_memory_up_to_the_handoff_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagereceive, "HANDOFF_BYTES", 3)
    one, two = (VerifiedChunk(hashlib.sha256(data).digest(), data) for data in (b"ab", b"cd"))
    landing = imagereceive._Landing({one.digest: 2, two.digest: 2})
    landing.landed(one)
    landing.landed(two)  # 4 bytes would be over the bound: the archive reads this one from the store
    assert landing.bytes == 4
    assert landing.take(one.digest) == b"ab"
    assert landing.take(two.digest) is None
    assert landing.take(one.digest) is None  # handed over once; a repeat of the digest reads the store
    landing.landed(VerifiedChunk(hashlib.sha256(b"x").digest(), b"x"))  # not waited for: not held
    assert landing.take(hashlib.sha256(b"x").digest()) is None
