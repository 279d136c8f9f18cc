"""Exact normalization statistics over every frame, and the per-field normalizer built on them.

Quantiles are computed over the concatenated per-frame values of all episodes of all datasets (parquet
columns only, never video). Merging per-episode summaries gives wrong q01/q99 (lerobot PR #3804), so it
is never done here. Quantiles use numpy's default (linear interpolation); std is the population std.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geo3d.core.errors import DataError
from geo3d.data.lerobot_layout import ACTION_KEY, STATE_KEY
from geo3d.data.meta_stats import vector_stats

FIELDS = {"action": ACTION_KEY, "state": STATE_KEY}  # our stats key -> parquet column / meta/stats.json key
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


def _datasets(source: Any) -> list:
    """A LiberoMixture (its datasets) or a single LeRobotDataset."""
    return list(getattr(source, "datasets", [source]))


def exact_stats(x: np.ndarray) -> dict[str, list[float]]:
    """min/max/mean/std/q01/q99 per dimension of [N, D] values, computed in float64 over all N rows."""
    stats = vector_stats(x)  # the same float64 computation the datasets' meta/stats.json entries use
    return {name: stats[name] for name in STAT_NAMES}


def compute_norm_stats(source: Any) -> dict[str, Any]:
    """Exact stats of action and state over all frames of a LiberoMixture (or one LeRobotDataset)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    for ds in _datasets(source):
        cols = ds.read_columns(list(FIELDS.values()))
        for key, col in FIELDS.items():
            parts[key].append(cols[col])
    out: dict[str, Any] = {key: exact_stats(np.concatenate(v)) for key, v in parts.items()}
    out["num_frames"] = int(sum(len(p) for p in parts["action"]))
    out["datasets"] = [ds.identity() for ds in _datasets(source)]
    return out


def save_norm_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Write stats as JSON atomically (beside every run's outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, path)
    return path


def load_norm_stats(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"norm stats file {path} is missing; recompute it (it is written beside every run)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"norm stats file {path} is corrupt: {e}; delete it and recompute") from e
    bad = [k for k in FIELDS if not isinstance(stats.get(k), dict) or any(s not in stats[k] for s in STAT_NAMES)]
    if bad:
        raise DataError(f"norm stats file {path} lacks {STAT_NAMES} for {bad}; recompute it")
    return stats


def _like(x: Any, arr: np.ndarray) -> Any:
    """`arr` as the same array type (numpy or torch), dtype and device as `x`."""
    if isinstance(x, np.ndarray):
        return arr.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)

    return torch.as_tensor(arr, dtype=x.dtype, device=x.device)


NORM_METHODS = ("min_max", "quantile", "mean_std", "identity")


class Normalizer:
    """One field's (action or state) normalization with the run's statistics, per dimension.

    min_max: [min, max] -> [-1, 1]; quantile: [q01, q99] -> [-1, 1] (not clipped, so exactly invertible);
    mean_std: (x - mean) / std; identity: unchanged. `raw_dims` stay unchanged whatever the method (LIBERO's
    gripper action is already -1/+1). A dimension with zero range maps to 0 and back to its constant value,
    whatever the model predicted for it (the demo data's rotation is always 0: passing a policy's residual noise
    there would turn the gripper in the simulator, an action the data never took), so `unnormalize` is the
    exact inverse of `normalize` (up to float rounding) on every dimension.
    """

    def __init__(self, stats: dict[str, Any], field: str = "action", method: str = "min_max",
                 raw_dims: Sequence[int] = ()):
        if method not in NORM_METHODS:
            raise DataError(f"unknown normalization method {method!r} for {field}; valid: {', '.join(NORM_METHODS)}")
        self.field, self.method = field, method
        self.center, half = _center_half(stats, field, method)
        self.half = np.where(half > 0, half, 1.0)
        self.const = half <= 0
        self.raw = np.zeros(self.center.shape, bool)
        self.raw[list(raw_dims)] = True
        if method == "identity":
            self.raw[:] = True

    def normalize(self, x: Any) -> Any:
        """[..., D] raw -> [..., D] normalized (raw dims unchanged)."""
        out = (x - _like(x, self.center)) / _like(x, self.half)
        out = out * _like(x, (~self.const).astype(np.float64))
        return _where(x, self.raw, x, out)

    def unnormalize(self, normalized: Any) -> Any:
        """Exact inverse of `normalize`."""
        out = normalized * _like(normalized, self.half * ~self.const) + _like(normalized, self.center)
        return _where(normalized, self.raw, normalized, out)


def _center_half(stats: dict[str, Any], field: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(center, half-range) so that normalized = (x - center) / half."""
    s = stats[field]
    if method == "mean_std":
        return np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64)
    lo_key, hi_key = ("q01", "q99") if method == "quantile" else ("min", "max")
    lo, hi = np.asarray(s.get(lo_key, s["min"]), np.float64), np.asarray(s.get(hi_key, s["max"]), np.float64)
    if method == "identity":
        return np.zeros(lo.shape), np.ones(lo.shape)
    if lo.shape != hi.shape or np.any(hi < lo):
        raise DataError(f"{field} stats are inconsistent ({lo_key} > {hi_key} or shapes differ); recompute norm stats")
    return (hi + lo) / 2, (hi - lo) / 2


def _where(x: Any, mask: np.ndarray, a: Any, b: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.where(mask, a, b)

    return torch.where(torch.as_tensor(mask, device=x.device), a, b)


def _pooled(entries: list[tuple[int, dict[str, Any]]]) -> dict[str, np.ndarray]:
    """Exact whole-set min/max/mean/std from per-dataset (count, stats) -- only for the comparison."""
    n = np.array([c for c, _ in entries], np.float64)[:, None]
    get = lambda k: np.array([np.asarray(s[k], np.float64).reshape(-1) for _, s in entries])  # noqa: E731
    mean = (n * get("mean")).sum(0) / n.sum()
    var = (n * (get("std") ** 2 + (get("mean") - mean) ** 2)).sum(0) / n.sum()
    return {"min": get("min").min(0), "max": get("max").max(0), "mean": mean, "std": np.sqrt(var)}


def compare_with_meta_stats(stats: dict[str, Any], source: Any) -> dict[str, Any]:
    """Max |ours - meta/stats.json| for min/max/mean/std of action and state, over datasets that have one."""
    entries, compared, missing = {k: [] for k in FIELDS}, [], []
    for ds in _datasets(source):
        meta = ds.meta_stats()
        if not meta or any(col not in meta for col in FIELDS.values()):
            missing.append(ds.name)
            continue
        compared.append(ds.name)
        for key, col in FIELDS.items():
            entries[key].append((ds.num_frames, meta[col]))
    diffs: dict[str, Any] = {}
    if compared and not missing:  # a partial comparison would compare different frame sets
        for key in FIELDS:
            pooled = _pooled(entries[key])
            diffs[key] = {s: float(np.max(np.abs(pooled[s] - np.asarray(stats[key][s])))) for s in pooled}
    return {"compared": compared, "missing": missing, "max_abs_diff": diffs}
