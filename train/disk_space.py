"""`geo3d train` and disk space: what a checkpoint needs, what a storage fault leaves safe, what it cuts short.

A checkpoint's size is measured from the last complete one when the run has one; before that it is estimated
from parameter counts (`checkpoint_bytes_from_counts`; said so in the fault message; `geo3d doctor` uses the
same formula). Counts come from `policy.param_counts()` on the meta device (what `train --dry-run` prints). The
layout is train/checkpoint.py's: model.safetensors (every parameter, counted at fp32: an upper bound for a bf16
VLM) + resume/ (AdamW's exp_avg and exp_avg_sq in fp32 per trainable parameter; with EMA also the raw trainable
weights). Per-GPU memory is train/memory.py's (the `--dry-run` table).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from geo3d.core.storage_faults import human_bytes
from geo3d.features_store.store_size import du_bytes
from geo3d.policy.run_dir import CKPT_DIR, latest_checkpoint
from geo3d.train.run_config import run_dir_of

FP32 = 4


def checkpoint_bytes_from_counts(counts: Mapping[str, Mapping[str, int]], ema: bool, starvla_pt: bool = False) -> int:
    """Bytes of one checkpoint (see the module docstring for what is counted); `train.checkpoint.starvla_pt`
    adds the seed's second copy of every weight (steps_N_pytorch_model.pt)."""
    total, trainable = counts["total"]["total"], counts["total"]["trainable"]
    return FP32 * (total + 2 * trainable + (trainable if ema else 0) + (total if starvla_pt else 0))


def param_counts(cfg: Any) -> dict[str, dict[str, int]]:
    """The run's parameter counts (meta device, freeze list applied): `train --dry-run`'s numbers."""
    from geo3d.train.launch import dry_run  # torch + transformers: only when no checkpoint can be measured

    return dry_run(cfg)["params"]


def estimate_checkpoint_bytes(cfg: DictConfig) -> tuple[int, str]:
    """(bytes, how it was obtained): the newest complete checkpoint's size, else the parameter-count estimate."""
    last = latest_checkpoint(run_dir_of(cfg))
    if last is not None:
        return du_bytes(last), f"the size of {last}"
    return (checkpoint_bytes_from_counts(param_counts(cfg), bool(cfg.train.ema.enabled),
                                         bool(cfg.train.checkpoint.starvla_pt)),
            "estimated from the parameter counts (fp32 weights + AdamW moments: train/disk_space.py)")


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """A save cut by a fault leaves `checkpoints/.steps_N.partial`: never loaded, and removed to free space."""
    removed = []
    for d in sorted((Path(run_dir) / CKPT_DIR).glob(".steps_*.partial")):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def fault_hooks(cfg: DictConfig) -> dict[str, Callable[[], Any]]:
    """storage_guard hooks for a training run."""
    run_dir = run_dir_of(cfg)

    def needed() -> str:
        nbytes, how = estimate_checkpoint_bytes(cfg)
        return f"~{human_bytes(nbytes)} for the next checkpoint ({how})"

    def safe() -> str:
        last = latest_checkpoint(run_dir)
        if last is None:
            return f"no complete checkpoint yet in {run_dir}"
        return f"the last complete checkpoint {last} (metrics.jsonl lines after it are dropped on resume)"

    return {"needed": needed, "safe": safe, "cleanup": lambda: remove_partial_checkpoints(run_dir)}
