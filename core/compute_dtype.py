"""The one rule for the compute dtype: bf16 where the device computes bf16 natively, fp32 where it would emulate it.

On a CPU without bf16 dot-product units (AVX2-only x86, most ARM before v8.6) a matmul under bf16 autocast is
tens of times slower than fp32 (measured 58x on an AVX2 EPYC), so `auto` picks fp32 there; with AVX512-BF16 /
AMX-BF16 (x86) or the `bf16` feature (aarch64) it picks bf16, as on CUDA. Used by the geometry encoder
(precompute, `verify-cache --recompute`, eval) and the policy (train, inference). The choice changes results,
so every caller records the resolved dtype, never `auto`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from geo3d.core.errors import Geo3dError

COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
# /proc/cpuinfo flags that mean bf16 arithmetic in hardware (not just conversion instructions).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first core (x86 `flags`, aarch64 `Features`); empty if unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True if the CPU has bf16 arithmetic units AND torch's oneDNN bf16 path is usable on it."""
    flags = cpu_flags() if flags is None else flags
    if not flags & NATIVE_BF16_FLAGS:
        return False
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(mkldnn_bf16()) if mkldnn_bf16 is not None else True


def resolve_compute_dtype(requested: str, device: torch.device | str) -> str:
    """`auto` -> bfloat16 on CUDA and on CPUs with native bf16, else float32; an explicit dtype is kept."""
    requested = str(requested)
    if requested not in COMPUTE_DTYPES:
        raise Geo3dError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {requested!r}")
    if requested != "auto":
        return requested
    kind = torch.device(device).type
    if kind == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "bfloat16"


def describe_cpu() -> str:
    """'<model name>, native bf16: yes|no' for benchmark headers and the README table."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = sorted(cpu_flags() & NATIVE_BF16_FLAGS)
    return f"{name}, native bf16: {'yes (' + ', '.join(flags) + ')' if cpu_has_native_bf16() else 'no'}"
