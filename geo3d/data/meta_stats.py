"""lerobot-style `meta/stats.json` entries (what the writer stores, what `compare_with_meta_stats` reads).

These are descriptive statistics written into datasets we create; the statistics used for training
are computed exactly by `geo3d.data.norm_stats`, never taken from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def vector_stats(x: np.ndarray, quantiles: bool = True) -> dict[str, Any]:
    """min/max/mean/std (+ count and quantiles as lerobot v3.0 stores them) over axis 0 of [N, D]."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out: dict[str, Any] = {
        "min": x.min(0).tolist(), "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "count": [int(len(x))],
    }
    if quantiles:
        out.update({k: np.quantile(x, q, axis=0).tolist() for k, q in QUANTILES.items()})
    return out


def image_stats(frames: np.ndarray) -> dict[str, Any]:
    """Per-channel stats of uint8 [N,H,W,3] frames in [0,1], shaped [3,1,1] like lerobot's."""
    x = frames.reshape(-1, 3)
    mean = np.zeros(3)
    sq = np.zeros(3)
    for c in range(3):  # per channel in float64 without a full float copy of the video
        ch = x[:, c].astype(np.float64) / 255.0
        mean[c], sq[c] = ch.mean(), (ch * ch).mean()
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    as_chw = lambda v: [[[float(a)]] for a in v]  # noqa: E731
    return {
        "min": as_chw(x.min(0) / 255.0), "max": as_chw(x.max(0) / 255.0),
        "mean": as_chw(mean), "std": as_chw(std), "count": [int(len(frames))],
    }


def columns_stats(columns: dict[str, np.ndarray], quantiles: bool = True) -> dict[str, Any]:
    """Stats for every numeric column (state, action, timestamp, indices)."""
    return {k: vector_stats(v, quantiles) for k, v in columns.items()}
