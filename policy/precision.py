"""Training precision: fp32 master weights for every trainable parameter; compute in the device's native dtype.

AdamW on bf16 weights at lr 1e-5 loses most updates to rounding (a bf16 weight near 0.02 moves in steps of
~1e-4), so every trainable parameter is fp32 on every launch path (plain, accelerate single/multi GPU, multi-node).
The forward/backward runs under accelerate's bf16 autocast where the device computes bf16 natively
(`geo3d.core.device`: CUDA, AVX512-BF16/AMX CPUs) and in plain fp32 where bf16 would be emulated.
Frozen parameters keep `model.vlm.dtype` (memory); only that mix needs autocast, which is checked here.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch
from torch import nn

from geo3d.core.device import resolve_compute_dtype
from geo3d.core.errors import Geo3dError

PRECISIONS = ("auto", "no", "bf16", "fp16")  # train.mixed_precision; `no` = fp32 compute


def accelerate_precision(requested: str, device: torch.device | str) -> str:
    """`train.mixed_precision` -> accelerate's value; `auto` follows geo3d.core.device on `device`."""
    requested = str(requested)
    if requested not in PRECISIONS:
        raise Geo3dError(f"train.mixed_precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if resolve_compute_dtype("auto", device) == "bfloat16" else "no"


def keep_trainable_fp32(model: nn.Module, precision: str) -> int:
    """Cast every trainable parameter to fp32 in place (the master weights); returns how many elements moved.

    Call after the freeze list is applied and before the optimizer is built. Under fp32 compute (`no`) a module
    mixing fp32 trainable and low-precision frozen weights cannot run, so that case is refused up front.
    """
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += p.numel()
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if low and precision == "no" and any(p.requires_grad for p in model.parameters()):
        raise Geo3dError(f"frozen weights in {', '.join(low)} next to fp32 trainable ones need autocast, but the "
                         f"compute dtype is fp32 (train.mixed_precision resolved to 'no'): set "
                         f"model.vlm.dtype=float32, or train.mixed_precision=bf16 on a device with bf16")
    return cast


def inference_autocast(requested: str, device: torch.device | str) -> ContextManager[Any]:
    """The same rule at inference: bf16 autocast where training's `auto` would use it, else nothing."""
    device = torch.device(device)
    precision = accelerate_precision(requested, device)
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
