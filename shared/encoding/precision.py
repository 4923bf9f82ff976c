"""Numeric precision of a collection's image model, and the default for new collections.

Features from bf16 or fp16 inference agree with fp32 ones (cosine >= 0.99, a test) but are not
interchangeable: ranking fp32 items with bf16 queries changes the top-10 noticeably. So the
precision is part of a collection's model setting, fixed when it is created, and every worker
(CPU or CUDA) encodes that collection's images and image queries in it. Collections created
before the setting existed were encoded in fp32.

`auto` picks bf16 where this host has bf16 matrix units (an NVIDIA GPU, or a CPU with AMX) and
fp32 elsewhere: on a CPU with AVX512-BF16 but no AMX, compiled fp32 measured as fast as compiled
bf16 or fp16 (`python -m bench.encode`), and it is exact. Torch-free: the API resolves it without
loading a model.
"""
from __future__ import annotations

from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16")
LEGACY_PRECISION = "fp32"
_BF16_CPU_FLAGS = {"amx_bf16"}


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def host_precision() -> str:
    """The precision new collections get here: bf16 with an NVIDIA GPU or AMX, else fp32."""
    if _cpu_flags() & _BF16_CPU_FLAGS or Path("/proc/driver/nvidia/version").exists():
        return "bf16"
    return "fp32"


def resolve_precision(requested: str | None, default: str = "auto") -> str:
    """A concrete precision for a new collection; ValueError for an unknown name."""
    value = (requested or default).lower()
    if value == "auto":
        return host_precision()
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {value!r}")
    return value
