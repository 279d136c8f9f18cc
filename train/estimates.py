"""The size of one training checkpoint from parameter counts: one place for the storage-fault message
(`geo3d train` before its first checkpoint) and `geo3d doctor`'s checkpoint disk check.

Counts come from `policy.param_counts()` on the meta device (what `train --dry-run` prints). The layout is
train/checkpoint.py's: model.safetensors (every parameter, counted at fp32: an upper bound for a bf16 VLM) +
resume/ (AdamW's exp_avg and exp_avg_sq in fp32 per trainable parameter; with EMA also the raw trainable
weights). Per-GPU memory is train/memory.py's (the `--dry-run` table).
"""

from __future__ import annotations

from typing import Any, Mapping

FP32 = 4


def checkpoint_bytes_from_counts(counts: Mapping[str, Mapping[str, int]], ema: bool, starvla_pt: bool = False) -> int:
    """Bytes of one checkpoint (see the module docstring for what is counted); `train.checkpoint.starvla_pt`
    adds the seed's second copy of every weight (steps_N_pytorch_model.pt)."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return FP32 * (total + 2 * trainable + (trainable if ema else 0) + (total if starvla_pt else 0))


def param_counts(cfg: Any) -> dict[str, dict[str, int]]:
    """The run's parameter counts (meta device, freeze list applied): `train --dry-run`'s numbers."""
    from geo3d.train.launch import dry_run

    return dry_run(cfg)["params"]
