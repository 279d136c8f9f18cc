"""What decides the exact bits an encoder computes on this machine: device type and kernel-relevant versions.

Recorded in a features store (the encoder identity's `runtime`, and each shard's commit marker), so
`verify-cache --recompute` knows whether a bit-exact comparison with a fresh encode is meaningful. It is
informational: resuming a store on another device or torch is allowed (each shard records its own runtime),
so attaching and rebuilding an encoder compare identities without it (`without_runtime`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from geo3d.core.compute_dtype import NATIVE_BF16_FLAGS, cpu_flags, cpu_has_native_bf16

RUNTIME_KEY = "runtime"
# Keys whose difference can change kernels and so the bits (everything the record holds except this list).
NOT_KERNEL_KEYS = ("recorded_by",)


def kernel_runtime(device: torch.device | str) -> dict[str, Any]:
    """Device type, torch, and per device type: CUDA/cuDNN versions + GPU model, or the CPU's bf16 capability
    and the ISA torch / oneDNN dispatch to (ONEDNN_MAX_CPU_ISA caps it, e.g. AVX2 emulates bf16)."""
    dev = torch.device(device)
    rec: dict[str, Any] = {"device_type": dev.type, "torch": torch.__version__,
                           "recorded_by": "geo3d.core.runtime.kernel_runtime"}
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


def kernel_key(runtime: Mapping[str, Any] | None) -> tuple | None:
    """The part of a runtime record that selects kernels (None for a record from before runtimes existed)."""
    if not runtime:
        return None
    return tuple(sorted((k, str(v)) for k, v in runtime.items() if k not in NOT_KERNEL_KEYS))


def without_runtime(identity: Mapping[str, Any]) -> dict[str, Any]:
    """An encoder identity minus its informational runtime: what must match to attach or rebuild."""
    return {k: v for k, v in identity.items() if k != RUNTIME_KEY}
