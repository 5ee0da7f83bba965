"""Image references: Docker's grammar, a little stricter (a table of good and bad refs)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from protocol.imageref import MAX_LENGTH, image_ref_problem, is_valid_image_ref

DIGEST = "sha256:" + "ab" * 32

GOOD = [
    "busybox",
    "busybox:1",
    "peerd-test/busybox:1",
    "library/ubuntu:22.04",
    "docker.io/library/alpine:3.19",
    "ghcr.io/org/sub/image:v1.2.3-rc_1",
    "localhost/img",
    "localhost:5000/img:latest",
    "registry.example.com:443/a/b",
    "my-registry.local/team__x/img.name",
    "a--b/c",
    "img@" + DIGEST,
    "img:tag@" + DIGEST,
    "127.0.0.1:5000/img",
    "Registry.Example.com/img",  # a host may be upper case
    "x" * MAX_LENGTH,
]

BAD = [
    "",
    "--privileged",
    "-img",
    "../../etc/passwd",
    "./img",
    "/img",
    "img/",
    "a//b",
    "Upper/Case",
    "upper/Case",
    "Busybox",
    "x" * (MAX_LENGTH + 1),
    "img:",
    "img:-tag",
    "img:" + "t" * 129,
    "img@sha256:abc",
    "img@md5:" + "a" * 32,
    "img@" + DIGEST.upper(),
    "img name",
    "img\n",
    "img\0",
    "a..b",
    "a_-b",
    "a___b",
    "reg.io:port/img",
    "-reg.io/img",
    "ímg",
    "img:täg",
    ":tag",
    "@" + DIGEST,
]


@pytest.mark.parametrize("ref", GOOD)
def test_valid_references_pass(ref: str) -> None:
    assert image_ref_problem(ref) is None


@pytest.mark.parametrize("ref", BAD)
def test_invalid_references_are_refused_with_a_reason(ref: str) -> None:
    problem = image_ref_problem(ref)
    assert problem is not None and "image reference" in problem


def test_non_strings_are_refused() -> None:
    assert not is_valid_image_ref(None)
    assert not is_valid_image_ref(b"busybox")


@given(st.text(max_size=300))
def test_no_valid_reference_looks_like_an_option_or_a_path(ref: str) -> None:
    if is_valid_image_ref(ref):
        assert not ref.startswith(("-", "/", ".")) and ".." not in ref and len(ref) <= MAX_LENGTH
        assert not any(c.isspace() or ord(c) < 32 for c in ref)
