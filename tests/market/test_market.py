"""The market rules: fit checks, price, ranking."""

from __future__ import annotations

import dataclasses

import pytest

from peerd.market import rules as market
from peerd.market.rules import Misfit
from protocol.messages import Advert, GpuOffer, ImageContent, JobSpec, NodeRole

GIB = 1 << 30


def gpu(uuid: str, model: str = "NVIDIA A100-SXM4-80GB", memory: int = 80 * GIB) -> GpuOffer:
    return GpuOffer(uuid=uuid, model=model, memory=memory, compute_capability="8.0")


def advert(peer_id: str = "P1", **changes: object) -> Advert:
    base = Advert(
        peer_id=peer_id, seq=1, issued_at=1000.0, expires_at=1300.0, role=NodeRole.PROVIDER,
        addrs=(), version="0.1.0", cpus=8.0, memory=32 * GIB, disk=100 * GIB,
        gpus=(gpu("G0"), gpu("G1", model="NVIDIA T4", memory=16 * GIB)),
        free_cpus=8.0, free_memory=32 * GIB, free_gpus=("G0", "G1"),
        queue_depth=0, running=0, price_cpu_hour=0.01, price_gpu_hour=0.5,
        docker=True, gpu_runtime=True, network=False, max_timeout=3600.0, draining=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


CARRIED = ImageContent(id="sha256:" + "1" * 64, manifest="sha256:" + "2" * 64, size=1 << 20)


def test_a_provider_that_takes_images_fits_a_job_that_carries_one() -> None:
    assert market.misfit(spec(image_content=CARRIED), advert(images=True)) is None


def spec(**changes: object) -> JobSpec:
    return dataclasses.replace(JobSpec(image="busybox", command=("true",)), **changes)  # type: ignore[arg-type]


def test_price_is_cpus_times_cpu_price_plus_gpus_times_gpu_price() -> None:
    assert market.price_for(spec(cpus=4.0, gpus=2), advert()) == pytest.approx(4 * 0.01 + 2 * 0.5)


@pytest.mark.parametrize(
    ("job", "ad", "reason"),
    [
        (spec(), advert(role=NodeRole.REQUESTER), Misfit.NOT_A_PROVIDER),
        (spec(), advert(role=NodeRole.SEED), Misfit.NOT_A_PROVIDER),
        (spec(), advert(draining=True), Misfit.DRAINING),
        (spec(), advert(docker=False), Misfit.NO_DOCKER),
        (spec(cpus=9.0), advert(), Misfit.CPUS),
        (spec(cpus=4.0), advert(free_cpus=2.0), Misfit.CPUS),
        (spec(memory=33 * GIB), advert(), Misfit.MEMORY),
        (spec(gpus=1), advert(gpu_runtime=False), Misfit.GPU_RUNTIME),
        (spec(gpus=3), advert(), Misfit.GPUS),
        (spec(gpus=2), advert(free_gpus=("G0",)), Misfit.GPUS),
        (spec(gpus=1, gpu_model="H100"), advert(), Misfit.GPUS),
        (spec(gpus=2, gpu_memory=40 * GIB), advert(), Misfit.GPUS),
        (spec(gpus=1, min_cuda="12.4"), advert(), Misfit.CUDA),  # an advert without a CUDA version
        (spec(gpus=1, min_cuda="12.4"), advert(cuda_version="12.2"), Misfit.CUDA),
        (spec(gpus=1, min_compute_capability="9.0"), advert(), Misfit.GPUS),  # both are 8.0
        (spec(timeout=7200.0), advert(), Misfit.TIMEOUT),
        (spec(network=True), advert(), Misfit.NETWORK),
        (spec(image_content=CARRIED), advert(images=False), Misfit.IMAGES),
        (spec(cpus=4.0, max_price=0.039), advert(), Misfit.PRICE),
    ],
)
def test_misfit_names_the_failing_check(job: JobSpec, ad: Advert, reason: Misfit) -> None:
    assert market.misfit(job, ad) is reason
    assert not market.fits(job, ad)


@pytest.mark.parametrize(
    "job",
    [
        spec(),
        spec(cpus=8.0, memory=32 * GIB),
        spec(gpus=2),
        spec(gpus=1, gpu_model="a100", gpu_memory=80 * GIB),
        spec(gpus=1, gpu_model="t4"),
        spec(cpus=4.0, max_price=0.04),
        spec(timeout=3600.0),
    ],
)
def test_specs_within_the_advert_fit(job: JobSpec) -> None:
    assert market.misfit(job, advert()) is None


def test_network_job_fits_a_provider_that_allows_network() -> None:
    assert market.fits(spec(network=True), advert(network=True))


def test_gpus_are_not_required_of_a_cpu_job() -> None:
    assert market.fits(spec(), advert(gpus=(), free_gpus=(), gpu_runtime=False))


def test_rank_orders_by_price_then_fit_then_load_and_drops_misfits() -> None:
    job = spec(cpus=2.0)
    cheap = advert("cheap", price_cpu_hour=0.001)
    tight = advert("tight", free_cpus=2.0, cpus=2.0)
    loose = advert("loose")
    busy = advert("busy", free_cpus=2.0, cpus=2.0, running=3)
    small = advert("small", free_cpus=1.0)
    ranked = market.rank(job, [loose, small, busy, tight, cheap])
    assert [a.peer_id for a in ranked] == ["cheap", "tight", "busy", "loose"]


def test_explain_counts_reasons() -> None:
    ads = [advert("a", draining=True), advert("b", draining=True), advert("c", docker=False), advert("d")]
    assert market.explain(spec(), ads) == {"draining": 2, "no_docker": 1}


def test_a_relayed_provider_comes_after_an_equally_fitting_direct_one_but_not_after_a_worse_fit() -> None:
    job = spec(cpus=2.0)
    circuit = ("/ip4/10.0.0.1/tcp/4001/p2p/R1/p2p-circuit/p2p/relayed",)
    relayed = advert("a-relayed", addrs=circuit)  # sorts first by peer ID alone
    direct = advert("z-direct", addrs=("/ip4/10.0.0.2/tcp/4001/p2p/z-direct",))
    assert [a.peer_id for a in market.rank(job, [relayed, direct])] == ["z-direct", "a-relayed"]
    pricier = advert("z-direct", addrs=direct.addrs, price_cpu_hour=0.02)
    assert [a.peer_id for a in market.rank(job, [pricier, relayed])] == ["a-relayed", "z-direct"]


def test_cuda_and_compute_capability_are_met_by_newer_ones() -> None:
    ad = advert(cuda_version="12.10", gpu_driver="560.35.03")
    assert market.fits(spec(gpus=2, min_cuda="12.4", min_compute_capability="7.5"), ad)
    assert market.fits(spec(gpus=1, min_cuda="12.10", min_compute_capability="8.0"), ad)
    assert not market.fits(spec(gpus=1, min_cuda="12.11"), ad)
    assert market.fits(spec(min_cuda="99.0"), advert())  # a CPU job asks nothing of GPUs


def test_an_80g_job_takes_an_h100_as_nvml_reports_it() -> None:
    h100 = GpuOffer(uuid="H", model="NVIDIA H100 80GB HBM3", memory=81_559 << 20, compute_capability="9.0")
    ad = advert(gpus=(h100,), free_gpus=("H",))
    assert market.fits(spec(gpus=1, gpu_memory=80 * 10**9, gpu_model="H100"), ad)
    assert not market.fits(spec(gpus=1, gpu_model="H10"), ad)
