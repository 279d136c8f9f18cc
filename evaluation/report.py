"""`geo3d report`: compare runs (one per compressor) in one PNG and one markdown table.

Per run it reads RUN_DIR/metrics.jsonl (written by train/metrics.py), RUN_DIR/resolved_config.yaml
(model.compressor.type names the run) and every eval result RUN_DIR/eval*/results.json (written by
`geo3d eval`, whose default --out for a run's checkpoint is RUN_DIR/eval_<suite>/). Panels: training loss,
gradient norm reaching the compressor, attention mass on geometry tokens per DiT layer, success per suite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geo3d.errors import Geo3dError

METRICS_FILE = "metrics.jsonl"
# Flattened metric keys (nested maps joined by "/", list items by index), matched by pattern so that the
# report reads both grouped ({"grad_norm": {"compressor": x}}) and flat ("grad_norm/compressor") records.
LOSS_KEYS = ("loss", "train/loss")
GRAD_COMPRESSOR = re.compile(r"grad.*norm.*compressor|compressor.*grad.*norm")
GEOM_ATTN = re.compile(r"(attn|attention).*geom.*?/?(\d+)$")


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, list):
            out.update({f"{key}/{i}": x for i, x in enumerate(v)})
        else:
            out[key] = v
    return out


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    run_dir: Path
    label: str
    compressor: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_steps: list[int] = field(default_factory=list)
    grad_compressor: list[float] = field(default_factory=list)
    geom_attn: dict[int, list[float]] = field(default_factory=dict)   # DiT layer -> values over logged steps
    success: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> eval summary

    def tail_mean(self, values: list[float], frac: float = 0.1) -> float | None:
        """Mean of the last `frac` of a curve: a noise-robust 'final' value."""
        if not values:
            return None
        n = max(1, int(len(values) * frac))
        return sum(values[-n:]) / n


def _compressor_of(run_dir: Path) -> str:
    cfg = run_dir / "resolved_config.yaml"
    if not cfg.exists():
        return "?"
    from omegaconf import OmegaConf

    value = OmegaConf.select(OmegaConf.load(cfg), "model.compressor.type", default=None)
    return str(value) if value is not None else "?"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves a torn last line: skip it, say so
            print(f"warning: {path}:{n} is not JSON (torn write?), skipped")
    return records


def _eval_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("eval*/results.json")):
        res = json.loads(path.read_text())
        if res.get("complete", True):
            out[res["suite"]] = {**res["summary"], "path": str(path)}
    return out


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.exists():
        raise Geo3dError(f"{run_dir} is not a training run: {METRICS_FILE} is missing; pass run directories "
                         "made by `geo3d train --out RUN_DIR`")
    compressor = _compressor_of(run_dir)
    run = RunSummary(run_dir, f"{compressor} ({run_dir.name})", compressor)
    for rec in _read_jsonl(metrics):
        flat, step = flatten(rec), rec.get("step")
        if step is None:
            continue
        loss = next((flat[k] for k in LOSS_KEYS if isinstance(flat.get(k), (int, float))), None)
        if loss is not None:
            run.steps.append(int(step))
            run.loss.append(float(loss))
        grads = [v for k, v in flat.items() if GRAD_COMPRESSOR.search(k) and isinstance(v, (int, float))]
        if grads:
            run.grad_steps.append(int(step))
            run.grad_compressor.append(float(grads[0]))
        for k, v in flat.items():
            m = GEOM_ATTN.search(k)
            if m and isinstance(v, (int, float)):
                run.geom_attn.setdefault(int(m.group(2)), []).append(float(v))
    run.success = _eval_results(run_dir)
    return run
