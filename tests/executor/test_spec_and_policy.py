"""RunSpec validation and the provider policy's typed refusals (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.executor import InputMount, InvalidSpec, PolicyError, ProviderPolicy, Reason, RunSpec

MiB = 1 << 20


def spec(**overrides: object) -> RunSpec:
    fields: dict[str, object] = {"task_id": "t-1", "image": "peerd-test/busybox:1", "cpus": 1.0,
                                 "memory": 64 * MiB, "timeout": 60.0}
    fields.update(overrides)
    return RunSpec(**fields)  # type: ignore[arg-type]


def test_env_is_stored_frozen_and_sorted() -> None:
    s = spec(env={"B": "2", "A": "1"})
    assert s.env == (("A", "1"), ("B", "2")) and s.environment == {"A": "1", "B": "2"}
    assert hash(s) == hash(spec(env={"A": "1", "B": "2"}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"task_id": "../../etc"}, {"task_id": "a/b"}, {"task_id": ""}, {"task_id": "-x"}, {"task_id": "ok\n"},
        {"image": ""}, {"image": "a b"}, {"cpus": 0}, {"cpus": float("nan")}, {"memory": 1024},
        {"pids": 0}, {"timeout": 0}, {"timeout": float("inf")}, {"gpus": ("GPU-1", "GPU-1")},
        {"gpus": ("GPU-1,GPU-2",)}, {"env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, {"env": {"A=B": "x"}},
        {"env": {"NVIDIA_DRIVER_CAPABILITIES": "all"}}, {"env": {"NVIDIA_REQUIRE_CUDA": "cuda>=1"}},
        {"env": {"NVIDIA_": "x"}}, {"image": "--privileged"}, {"image": "../../etc/passwd"},
        {"image": "Upper/Case"}, {"image": "a" * 256},
        {"user": "root; rm"}, {"command": ("ok", "nul\0")},
    ],
)
def test_malformed_specs_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec) as raised:
        spec(**overrides)
    assert raised.value.reason is Reason.INVALID_SPEC


@pytest.mark.parametrize(
    ("policy", "overrides", "reason"),
    [
        (ProviderPolicy(allowed_images=("ghcr.io/lab/*",)), {}, Reason.IMAGE_NOT_ALLOWED),
        (ProviderPolicy(max_time_limit=30), {}, Reason.TIME_LIMIT_TOO_LONG),
        (ProviderPolicy(), {"network": True}, Reason.NETWORK_NOT_ALLOWED),
        (ProviderPolicy(max_cpus=0.5), {}, Reason.CPUS_OVER_LIMIT),
        (ProviderPolicy(max_memory=32 * MiB), {}, Reason.MEMORY_OVER_LIMIT),
        (ProviderPolicy(), {"gpus": ("GPU-1",)}, Reason.NO_GPU_RUNTIME),
    ],
)
def test_policy_refusals_carry_reason_codes(
    policy: ProviderPolicy, overrides: dict[str, object], reason: Reason
) -> None:
    with pytest.raises(PolicyError) as raised:
        policy.check(spec(**overrides), gpu_runtime=False)
    assert raised.value.reason is reason and raised.value.reason == reason.value


def test_policy_allows_what_it_allows() -> None:
    policy = ProviderPolicy(allowed_images=("peerd-test/*", "ghcr.io/lab/*"), max_time_limit=60,
                            allow_network=True, max_cpus=1, max_memory=64 * MiB)
    policy.check(spec(network=True, gpus=("GPU-1",)), gpu_runtime=True)
    assert policy.violations(spec(), gpu_runtime=False) == []


def test_every_violation_is_listed() -> None:
    policy = ProviderPolicy(allowed_images=("x/*",), max_time_limit=1)
    reasons = [v.reason for v in policy.violations(spec(network=True), gpu_runtime=False)]
    assert reasons == [Reason.IMAGE_NOT_ALLOWED, Reason.TIME_LIMIT_TOO_LONG, Reason.NETWORK_NOT_ALLOWED]


def _mount(target: str) -> InputMount:
    return InputMount(Path("/srv/inputs/t"), target)


@pytest.mark.parametrize(
    "target",
    ["data", "/", "/out", "/out/x", "/proc", "/sys/x", "/dev", "/etc/passwd", "/tmp/in", "/run",
     "/data/../etc", "/data/", "//data", "/./data", "/data\0x"],
)
def test_input_mounts_outside_allowed_places_are_refused(target: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        _mount(target)
    assert raised.value.reason is Reason.INVALID_SPEC


def test_input_mounts_must_not_overlap_and_are_bounded_in_number() -> None:
    with pytest.raises(InvalidSpec, match="overlap"):
        spec(inputs=(_mount("/data"), _mount("/data/sub")))
    with pytest.raises(InvalidSpec, match="overlap"):
        spec(inputs=(_mount("/data"), _mount("/data")))
    with pytest.raises(InvalidSpec, match="at most"):
        spec(inputs=tuple(_mount(f"/in{i}") for i in range(17)))
    with pytest.raises(InvalidSpec):
        InputMount(Path("relative"), "/data")
    ok = spec(inputs=[_mount("/data"), _mount("/data2"), _mount("/opt/model")])
    assert [m.target for m in ok.inputs] == ["/data", "/data2", "/opt/model"]
