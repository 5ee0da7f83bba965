"""The one GPU matching rule: model by whole words, memory in decimal units with a small tolerance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerd.units import parse_size
from protocol.gpumatch import gpu_matches, is_version, memory_matches, model_matches, version_at_least

MiB = 1 << 20
H100 = ("NVIDIA H100 80GB HBM3", 81_559 * MiB)
A100_80 = ("NVIDIA A100-SXM4-80GB", 81_920 * MiB)
A100_40 = ("NVIDIA A100-SXM4-40GB", 40_960 * MiB)
A10 = ("NVIDIA A10", 23_028 * MiB)
L4 = ("NVIDIA L4", 23_034 * MiB)
L40S = ("NVIDIA L40S", 46_068 * MiB)
RTX_4090 = ("NVIDIA GeForce RTX 4090", 24_564 * MiB)
T4 = ("Tesla T4", 15_360 * MiB)
MIG = ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 4_864 * MiB)


@pytest.mark.parametrize(("wanted", "gpu", "fits"), [
    ("A10", A100_80, False),
    ("A10", A10, True),
    ("A100", A10, False),
    ("L4", L40S, False),
    ("L4", L4, True),
    ("L40S", L40S, True),
    ("A100 80GB", A100_80, True),
    ("A100 80GB", A100_40, False),
    ("a100-80gb", A100_80, True),
    ("h100", H100, True),
    ("H100 80GB", H100, True),
    ("H10", H100, False),
    ("RTX 4090", RTX_4090, True),
    ("rtx4090", RTX_4090, True),
    ("4090", RTX_4090, True),
    ("GeForce 4090", RTX_4090, True),
    ("4080", RTX_4090, False),
    ("T4", T4, True),
    ("T4", L40S, False),
    ("1g.5gb", MIG, True),
    ("", H100, True),
    ("  ", H100, True),
])
def test_model_matches_on_whole_words(wanted: str, gpu: tuple[str, int], fits: bool) -> None:
    assert model_matches(wanted, gpu[0]) is fits


@pytest.mark.parametrize(("flag", "gpu", "fits"), [
    ("80G", H100, True),  # 81,559 MiB: below 80 GiB, above 80 GB
    ("80G", A100_80, True),
    ("80G", A100_40, False),
    ("24G", RTX_4090, True),  # 24,564 MiB: 12 MB short of 24 GiB
    ("24G", L4, True),
    ("24G", T4, False),
    ("16G", T4, True),
    ("16G", ("Tesla T4", 15_109 * MiB), True),  # some T4s report less: within the tolerance
    ("40G", A100_40, True),
    ("48G", L40S, True),
    ("81G", H100, True),
    ("90G", H100, False),
    ("5G", MIG, True),
    ("0", MIG, True),
])
def test_cli_memory_in_decimal_units_matches_what_nvml_reports(flag: str, gpu: tuple[str, int], fits: bool) -> None:
    wanted = parse_size(flag, decimal=True)
    assert memory_matches(wanted, gpu[1]) is fits
    assert gpu_matches(None, wanted, name=gpu[0], memory=gpu[1]) is fits


def test_decimal_and_binary_units() -> None:
    assert parse_size("80G", decimal=True) == 80 * 10**9
    assert parse_size("80Gi", decimal=True) == parse_size("80GiB", decimal=True) == 80 << 30
    assert parse_size("512M", decimal=True) == 512 * 10**6
    assert parse_size("80G") == 80 << 30  # everything else stays binary


def test_model_and_memory_both_decide() -> None:
    name, memory = H100
    assert gpu_matches("H100", 80 * 10**9, name=name, memory=memory)
    assert not gpu_matches("A100", 80 * 10**9, name=name, memory=memory)
    assert not gpu_matches("H100", 100 * 10**9, name=name, memory=memory)


@pytest.mark.parametrize(("have", "want", "met"), [
    ("9.0", "8.0", True), ("8.6", "8.0", True), ("8.0", "8.6", False), ("12.10", "12.9", True),
    ("12.4", "12.4", True), ("12", "12.0", True), ("", "8.0", False), ("anything", "", True), ("x", "8.0", False),
])
def test_versions_compare_numerically(have: str, want: str, met: bool) -> None:
    assert version_at_least(have, want) is met


def test_compute_capability_is_part_of_the_match() -> None:
    name, memory = A100_80
    assert gpu_matches("A100", 0, name=name, memory=memory, min_capability="8.0", capability="8.0")
    assert not gpu_matches("A100", 0, name=name, memory=memory, min_capability="9.0", capability="8.0")
    assert not gpu_matches(None, 0, name=name, memory=memory, min_capability="7.0", capability="")


def test_what_reads_as_a_version() -> None:
    assert all(is_version(v) for v in ("12.4", "9.0", "550.54.15", "12"))
    assert not any(is_version(v) for v in ("", "12.", "v12", "12.4-rc1", "1.2.3.4.5"))


def test_gpu_versions_travel_only_when_set() -> None:
    from protocol import codec, messages as m
    from tests.protocol.helpers import sample_advert, sample_spec

    plain_advert, plain_spec = sample_advert("12D3KooWprovider"), sample_spec()
    plain_request = m.TaskRequest(task_id="t", requester="r", spec=plain_spec, sent_at=1.0)
    assert b"cuda_version" not in codec.encode(plain_advert) and b"min_cuda" not in codec.encode(plain_request)
    advert = replace(plain_advert, gpu_driver="550.54.15", cuda_version="12.4")
    spec = replace(plain_spec, min_cuda="12.4", min_compute_capability="8.0")
    assert codec.decode(codec.encode(advert)) == advert
    request = m.TaskRequest(task_id="t", requester="r", spec=spec, sent_at=1.0)
    assert codec.decode(codec.encode(request)) == request
