"""Simple parameter-count estimates of a training run's footprint: one place for the checkpoint size (storage
faults, `geo3d doctor`) and the per-GPU memory floor (`geo3d doctor`).

Deliberately simple, and said so wherever printed: counts come from `policy.param_counts()` on the meta device
(what `train --dry-run` prints). Memory is a floor for plain DDP: weights in the compute dtype, and for every
trainable parameter fp32 master weights + fp32 gradients + AdamW's two fp32 moments; activations, the CUDA
context and allocator slack are not counted (add ~20-40% at batch 8-16). The fuller per-GPU table (DDP / ZeRO-2 for 1,
4, 8 GPUs, activations) is train/memory.py's `estimate_memory(cfg)`, printed by `train --dry-run`.
"""

from __future__ import annotations

from typing import Any, Mapping

FP32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_bytes_from_counts(counts: Mapping[str, Mapping[str, int]], ema: bool) -> int:
    """Weights once (model.safetensors; fp32 upper bound) + resume state (AdamW exp_avg and exp_avg_sq per
    trainable; the raw trainable weights too with EMA, train/checkpoint.py)."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return FP32 * (total + 2 * trainable + (trainable if ema else 0))


def gpu_memory_floor_bytes(counts: Mapping[str, Mapping[str, int]], compute_dtype: str) -> int:
    """Per-GPU bytes under DDP before activations (see the module docstring)."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return DTYPE_BYTES.get(compute_dtype, FP32) * total + (FP32 * 4) * trainable


def param_counts(cfg: Any) -> dict[str, dict[str, int]]:
    """The run's parameter counts (meta device, freeze list applied): `train --dry-run`'s numbers."""
    from train.launch import dry_run

    return dry_run(cfg)["params"]
