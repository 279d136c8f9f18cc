"""The run's metrics.jsonl as data: reading it back and summarising a curve.

Light on purpose (json only, no torch): `geo3d report` and the tests read runs with it, and the trainer
(`geo3d.train.metrics`) writes the same file.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


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
