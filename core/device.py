"""The device a verb runs on, the compute dtype it uses there, and what decides the exact bits it computes.

- `resolve_device`: the one device resolution for every verb (precompute, train, serve, eval): `auto` picks a GPU
  when there is one.
- `resolve_compute_dtype`: bf16 where the device computes bf16 natively, fp32 where it would emulate it. On a CPU
  without bf16 dot-product units (AVX2-only x86, most ARM before v8.6) a matmul under bf16 autocast is tens of
  times slower than fp32 (measured 58x on an AVX2 EPYC), so `auto` picks fp32 there; with AVX512-BF16 / AMX-BF16
  (x86) or the `bf16` feature (aarch64) it picks bf16, as on CUDA. Used by the geometry encoder (precompute,
  `verify-cache --recompute`, eval) and the policy (train, inference). The choice changes results, so every
  caller records the resolved dtype, never `auto`.
- `kernel_runtime`: device type and kernel-relevant versions, recorded in a features store (the encoder
  identity's `runtime`, and each shard's commit marker) so `verify-cache --recompute` knows whether a bit-exact
  comparison with a fresh encode is meaningful (geo3d.core.provenance compares records without torch).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """`auto` -> cuda:LOCAL_RANK when CUDA is available, else cpu; an explicit cuda device without CUDA is
    refused (a clear error, not a crash deep inside torch); anything else is used as given."""
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise Geo3dError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return f"cuda:{(local_rank or 0) % torch.cuda.device_count()}"
    return "cpu"


def kernel_runtime(device: torch.device | str) -> dict[str, Any]:
    """Device type, torch, and per device type: CUDA/cuDNN versions + GPU model, or the CPU's bf16 capability
    and the ISA torch / oneDNN dispatch to (ONEDNN_MAX_CPU_ISA caps it, e.g. AVX2 emulates bf16)."""
    dev = torch.device(device)
    rec: dict[str, Any] = {"device_type": dev.type, "torch": torch.__version__,
                           "recorded_by": "geo3d.core.device.kernel_runtime"}
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        rec.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(index), gpu_capability=f"{major}.{minor}")
    elif dev.type == "cpu":
        rec.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_native_bf16=cpu_has_native_bf16(),
                   cpu_bf16_flags=sorted(cpu_flags() & NATIVE_BF16_FLAGS),
                   onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None)
    return rec
