"""Where a training run keeps its checkpoints (torch-free: `geo3d submit` reads it to decide on --resume)."""

from __future__ import annotations

CKPT_DIR = "checkpoints"
MARKER = "checkpoint.json"
# A complete checkpoint, relative to the run dir: the train sbatch templates pass --resume when one exists.
CHECKPOINT_GLOB = f"{CKPT_DIR}/steps_*/{MARKER}"
