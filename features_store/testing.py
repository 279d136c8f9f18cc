"""Synthetic stores for tests (ours and other packages'): deterministic tokens, no encoder, no dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from geo3d.features_store.spec import StoreLayout, StoreSpec
from geo3d.features_store.store import FeatureStore

TINY_ENCODER = {"name": "synthetic", "fingerprint": "synthetic-0", "config": {"seed": 0}}


def synthetic_spec(frames: int = 20, views: int = 2, tokens: int = 4, dim: int = 8, shard_frames: int = 8,
                   encoder: Mapping[str, Any] | None = None, dataset: Mapping[str, Any] | None = None,
                   **layout: Any) -> StoreSpec:
    return StoreSpec(frames=frames, views=views, tokens=tokens, dim=dim, encoder=dict(encoder or TINY_ENCODER),
                     preprocessing={"resolution": 224, "views": ["agentview", "wrist"]},
                     dataset=dict(dataset or {"suite": "synthetic", "num_frames": frames}),
                     layout=StoreLayout(shard_frames=shard_frames, **layout))


def synthetic_tokens(spec: StoreSpec, frames: range, seed: int = 0) -> torch.Tensor:
    """bf16 [len(frames), V, T, D]; frame i's values depend only on (seed, i), so any writer reproduces them."""
    out = torch.empty((len(frames), *spec.frame_shape), dtype=torch.bfloat16)
    for j, i in enumerate(frames):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[j] = torch.randn(spec.frame_shape, generator=g).to(torch.bfloat16)
    return out


def synthetic_index(spec: StoreSpec, frames: range, episode_len: int = 5) -> dict[str, np.ndarray]:
    """One dataset of fixed-length episodes; content id = frame number + 1000 (distinct, deterministic)."""
    f = np.asarray(frames, dtype=np.int64)
    return {"dataset_id": np.zeros_like(f), "episode_index": f // episode_len, "frame_index": f % episode_len,
            "content_id": (f + 1000).astype(np.uint64)}


def write_all_shards(store: FeatureStore, shards: list[int] | None = None, seed: int = 0) -> None:
    for i in store.missing_shards() if shards is None else shards:
        rng = store.shard_range(i)
        store.write_shard(i, synthetic_tokens(store.spec, rng, seed), synthetic_index(store.spec, rng),
                          writer_info={"device": "cpu"})


def make_synthetic_store(path: str | Path, seed: int = 0, **spec_kwargs: Any) -> FeatureStore:
    store = FeatureStore.open_or_create(path, synthetic_spec(**spec_kwargs))
    write_all_shards(store, seed=seed)
    return store
