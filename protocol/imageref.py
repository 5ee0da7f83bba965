"""Container image references: which strings may name an image. Pure.

Docker's reference grammar (distribution/reference), kept slightly stricter:

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path-component ( "/" path-component )*
    domain      := domain-component ( "." domain-component )* [ ":" port ]
    path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*     (lowercase only)
    separator   := "." | "_" | "__" | "-"+
    tag         := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex digits

The first component is a registry host only if it contains "." or ":" or is
``localhost`` (Docker also takes a bare upper-case word for a host; we do
not). The whole reference is at most 255 characters. Nothing that passes can
start with "-", hold "..", whitespace, upper case in the path or a control
character, so a reference cannot be mistaken for an option or a file path.
"""

from __future__ import annotations

import re

MAX_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
    r"(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*(?::[0-9]{1,5})?",
    re.ASCII,
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


def image_ref_problem(ref: object) -> str | None:
    """Why ``ref`` is not a valid image reference, or None if it is."""
    if not isinstance(ref, str) or not ref:
        return "an image reference must be a non-empty string"
    if len(ref) > MAX_LENGTH:
        return f"an image reference is at most {MAX_LENGTH} characters, this one has {len(ref)}"
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return f"image reference {ref!r}: the digest must be sha256:<64 lowercase hex digits>"
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            return f"image reference {ref!r}: bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)"
    components = name.split("/")
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            return f"image reference {ref!r}: bad registry host {first!r}"
        components = components[1:]
    for part in components:
        if not _PATH_COMPONENT.fullmatch(part):
            return (
                f"image reference {ref!r}: bad path component {part!r} "
                "(lowercase letters and digits, joined by '.', '_', '__' or '-')"
            )
    return None


def is_valid_image_ref(ref: object) -> bool:
    return image_ref_problem(ref) is None


__all__ = ["MAX_LENGTH", "image_ref_problem", "is_valid_image_ref"]
