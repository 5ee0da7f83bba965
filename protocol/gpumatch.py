"""Whether a GPU is what a job asked for: the one rule, used by the requester's market (on adverts)
and the provider's capacity ledger (on NVML's answer). Pure.

Model: the wanted text and the GPU's name are cut into tokens (letters and digits, case ignored; any
other character separates), and every wanted token must be a token of the name, or a run of adjacent
name tokens written together. So "A100 80GB" matches "NVIDIA A100-SXM4-80GB", "rtx4090" matches
"NVIDIA GeForce RTX 4090", but "A10" does not match an A100 nor "L4" an L40S. An empty model matches
every GPU.

Memory: ``min_memory`` is in bytes, and the CLI reads ``--gpu-memory`` in decimal units (80G = 80×10⁹
bytes), the units GPU boxes are labelled in. NVML reports a little less than the label promises (an
"80GB" H100 reports 81,559 MiB, a "16GB" T4 may report 15,109 MiB), so a GPU matches when it reports at
least 96% of ``min_memory`` (``MEMORY_TOLERANCE_PERCENT``).

Compute capability ("8.0", "9.0") and CUDA version ("12.4") compare as versions: a job asking for 8.0 takes
an 8.6 or a 9.0 GPU; a GPU whose capability NVML did not report meets no asked capability.
"""

from __future__ import annotations

import re

MEMORY_TOLERANCE_PERCENT = 4  # a GPU may report this much below the asked memory and still match
_TOKEN = re.compile(r"[0-9a-z]+")
_VERSION = re.compile(r"\d{1,6}(\.\d{1,6}){0,3}")


def is_version(text: str) -> bool:
    """``text`` is a version such as "12.4", "9.0" or "550.54.15" (1 to 4 numbers)."""
    return bool(_VERSION.fullmatch(text))


def version_at_least(have: str, want: str) -> bool:
    """``have`` ≥ ``want``, numerically part by part ("12.10" > "12.9"); no ``want`` is always met, an
    unknown ``have`` ("") never meets one."""
    if not want:
        return True
    if not is_version(have) or not is_version(want):
        return False
    a, b = [int(p) for p in have.split(".")], [int(p) for p in want.split(".")]
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) >= b + [0] * (width - len(b))


def tokens(text: str) -> tuple[str, ...]:
    """The lowercase letter-and-digit runs of ``text``, in order."""
    return tuple(_TOKEN.findall(text.casefold()))


def _joined_runs(words: tuple[str, ...]) -> set[str]:
    return {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def model_matches(wanted: str, name: str) -> bool:
    """Every token of ``wanted`` is a token of ``name``, or adjacent name tokens written together."""
    asked = tokens(wanted)
    if not asked:
        return True
    present = _joined_runs(tokens(name))
    return all(token in present for token in asked)


def memory_matches(min_memory: int, memory: int) -> bool:
    """``memory`` (bytes, as NVML reports) is at least ``min_memory`` less the tolerance."""
    return memory * 100 >= min_memory * (100 - MEMORY_TOLERANCE_PERCENT)


def gpu_matches(
    model: str | None, min_memory: int, *, name: str, memory: int, min_capability: str = "", capability: str = "",
) -> bool:
    """A GPU called ``name`` with ``memory`` bytes and compute ``capability`` is one a job asking for ``model``,
    ``min_memory`` and ``min_capability`` takes."""
    return (memory_matches(min_memory, memory) and model_matches(model or "", name)
            and version_at_least(capability, min_capability))
