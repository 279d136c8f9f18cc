"""What a training run directory holds, for the processes that read it (serve, eval, report, submit, doctor).

    <run>/checkpoints/steps_<N>/   one policy each (policy/pretrained.py), complete once its MARKER exists
    <run>/metrics.jsonl            one JSON record per logging step (train/metrics.py writes it)
    <run>/resolved_config.yaml, provenance.json, norm_stats.json

Torch-free on purpose: `geo3d submit` and `geo3d report` read runs without loading a model.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

CKPT_DIR = "checkpoints"
MARKER = "checkpoint.json"  # written last into a checkpoint directory: its presence means "complete"
# A complete checkpoint, relative to the run dir: the train sbatch templates pass --resume when one exists.
CHECKPOINT_GLOB = f"{CKPT_DIR}/steps_*/{MARKER}"
METRICS_FILE = "metrics.jsonl"
NORM_STATS_FILE = "norm_stats.json"
RESOLVED_CONFIG = "resolved_config.yaml"
PROVENANCE_FILE = "provenance.json"
_STEP_DIR = re.compile(r"^steps_(\d+)$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"steps_{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (renamed into place and carrying their marker), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / MARKER).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, in order. A torn line (a write cut by kill -9) is skipped with a
    warning on stderr rather than failing the whole read."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{n} is not JSON (torn write?), skipped", file=sys.stderr)
    return records


def window_means(values: list[float], fraction: float = 0.1) -> tuple[float, float]:
    """Mean of the first and of the last `fraction` of a curve (at least one point each): how a fall in loss is
    judged, and a noise-robust 'final' value."""
    n = max(1, math.ceil(len(values) * fraction))
    return sum(values[:n]) / n, sum(values[-n:]) / n
