"""The advert a provider builds: its GPUs as the ledger has them, with the driver and CUDA versions."""

from __future__ import annotations

from dataclasses import replace

from peerd.config import Config
from peerd.executor.gpus import CapacityLedger
from peerd.host.nvml import FakeNvml
from peerd.market.adverts import HostFacts, build_advert, offered_gpus
from protocol.messages import Advert

GiB = 1 << 30


def advert_for(ledger: CapacityLedger) -> Advert:
    host = HostFacts(cpus=8.0, memory=32 * GiB, disk_free=GiB, docker=True, gpu_runtime=True, gpus=ledger.gpus)
    return build_advert(config=Config(), host=host, ledger=ledger, peer_id="P", addrs=[], now=1.0, seq=1,
                        queue_depth=0, running=0, draining=False)


def test_the_advert_names_the_driver_and_cuda_versions_of_its_gpus() -> None:
    ad = advert_for(CapacityLedger(cpus=8, memory=32 * GiB, gpus=FakeNvml.identical(2).read()))
    assert (ad.gpu_driver, ad.cuda_version) == ("550.54.15", "12.4")
    cpu_only = advert_for(CapacityLedger(cpus=8, memory=32 * GiB))
    assert (cpu_only.gpu_driver, cpu_only.cuda_version) == ("", "")


def test_a_version_nvml_writes_oddly_is_left_unknown_not_fatal() -> None:
    odd = [replace(g, driver_version="r550_00") for g in FakeNvml.identical(1).read()]
    ad = advert_for(CapacityLedger(cpus=8, memory=32 * GiB, gpus=odd))
    assert ad.gpu_driver == "" and ad.cuda_version == "12.4"


def test_naming_a_mig_gpu_in_the_config_offers_its_mig_devices() -> None:
    parent = FakeNvml.identical(1).read()[0]
    migs = tuple(replace(parent, uuid=f"MIG-{i}", parent=parent.uuid) for i in range(2))
    config = replace(Config(), resources=replace(Config().resources, gpus=(parent.uuid, "MIG-other")))
    assert offered_gpus(config, migs) == migs
    config = replace(Config(), resources=replace(Config().resources, gpus=("MIG-1",)))
    assert offered_gpus(config, migs) == migs[1:]
