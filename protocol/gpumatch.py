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
"""

from __future__ import annotations

import re

MEMORY_TOLERANCE_PERCENT = 4  # a GPU may report this much below the asked memory and still match
_TOKEN = re.compile(r"[0-9a-z]+")


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


def gpu_matches(model: str | None, min_memory: int, *, name: str, memory: int) -> bool:
    """A GPU called ``name`` with ``memory`` bytes is one a job asking for ``model`` and ``min_memory`` takes."""
    return memory_matches(min_memory, memory) and model_matches(model or "", name)
