"""lerobot-style `meta/stats.json` entries (what the writer stores, what `compare_with_meta_stats` reads).

These are descriptive statistics written into datasets we create; the statistics used for training
are computed exactly by `geo3d.data.norm_stats`, never taken from here.
"""

from __future__ import annotations

from typing import Any, Iterable

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


def image_stats(videos: Iterable[np.ndarray]) -> dict[str, Any]:
    """Per-channel stats in [0,1] of uint8 [N,H,W,3] arrays (streamed: never one big float copy),
    shaped [3,1,1] like lerobot's."""
    n, total, sq = 0, np.zeros(3), np.zeros(3)
    lo, hi = np.full(3, 255), np.zeros(3, np.int64)
    count = 0
    for frames in videos:
        x = frames.reshape(-1, 3)
        for c in range(3):
            ch = x[:, c].astype(np.float64)
            total[c] += ch.sum()
            sq[c] += (ch * ch).sum()
        lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
        n += len(x)
        count += len(frames)
    mean = total / n / 255.0
    std = np.sqrt(np.maximum(sq / n / 255.0**2 - mean * mean, 0.0))
    as_chw = lambda v: [[[float(a)]] for a in v]  # noqa: E731
    return {"min": as_chw(lo / 255.0), "max": as_chw(hi / 255.0), "mean": as_chw(mean), "std": as_chw(std),
            "count": [count]}


def columns_stats(columns: dict[str, np.ndarray], quantiles: bool = True) -> dict[str, Any]:
    """Stats for every numeric column (state, action, timestamp, indices)."""
    return {k: vector_stats(v, quantiles) for k, v in columns.items()}
