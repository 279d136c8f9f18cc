"""Simple parameter-count estimates of a training run's footprint: one place for the checkpoint size (storage
faults, `geo3d doctor`) and the per-GPU memory floor (`geo3d doctor`).

Deliberately simple, and said so wherever printed: counts come from `policy.param_counts()` on the meta device
(what `train --dry-run` prints). Memory is a floor for plain DDP: weights in the compute dtype, and for every
trainable parameter fp32 master weights + fp32 gradients + AdamW's two fp32 moments; activations, the CUDA
context and allocator slack are not counted (add ~20-40% at batch 8-16). A fuller table (ZeRO-2, activations)
belongs to `train --dry-run` once that lands.
"""

from __future__ import annotations

from typing import Any, Mapping

FP32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def checkpoint_bytes_from_counts(counts: Mapping[str, Mapping[str, int]], ema: bool) -> int:
    """fp32 inference weights + resume state (fp32 weights, AdamW exp_avg and exp_avg_sq per trainable) + EMA."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return FP32 * (total + total + 2 * trainable + (trainable if ema else 0))


def gpu_memory_floor_bytes(counts: Mapping[str, Mapping[str, int]], compute_dtype: str) -> int:
    """Per-GPU bytes under DDP before activations (see the module docstring)."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return DTYPE_BYTES.get(compute_dtype, FP32) * total + (FP32 * 4) * trainable


def param_counts(cfg: Any) -> dict[str, dict[str, int]]:
    """The run's parameter counts (meta device, freeze list applied): `train --dry-run`'s numbers."""
    from train.launch import dry_run

    return dry_run(cfg)["params"]
