"""Helpers for the train tests: a synthetic dataset plus a features store that truly matches it (written
with the store's real writer API and the data layer's real content ids; tokens are seeded random)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geo3d.data.mixture import LiberoMixture
from geo3d.encoders.views import image_path_probe
from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec

ENCODER = {"name": "synthetic-test", "fingerprint": "train-tests-0", "config": {"seed": 0}}


def make_matching_store(mixture, path: Path, views: int, tokens: int, dim: int, shard_frames: int = 16,
                        seed: int = 0, preprocessing: dict | None = None, encoder: dict | None = None) -> Path:
    """A complete store for `mixture`: index arrays and content ids from the data layer, random bf16 tokens."""
    n = len(mixture)
    content = np.zeros(n, dtype=np.uint64)
    for span in mixture.episodes():
        for k, (_, cid) in enumerate(mixture.iter_episode(span.dataset_id, span.episode_index)):
            content[span.start + k] = cid
    preprocessing = {"views": ["agentview", "wrist"], "image_path_probe": image_path_probe(224),
                     **(preprocessing or {})}
    spec = StoreSpec(frames=n, views=views, tokens=tokens, dim=dim, encoder=encoder or ENCODER, preprocessing=preprocessing,
                     dataset=mixture.identity(), layout=StoreLayout(shard_frames=shard_frames))
    store = FeatureStore.open_or_create(path, spec)
    g = torch.Generator().manual_seed(seed)
    all_tokens = torch.randn((n, views, tokens, dim), generator=g).to(torch.bfloat16)
    for i in range(spec.num_shards):
        r = store.shard_range(i)
        sl = slice(r.start, r.stop)
        index = {"dataset_id": mixture.dataset_id[sl], "episode_index": mixture.episode_index[sl],
                 "frame_index": mixture.frame_index[sl], "content_id": content[sl]}
        store.write_shard(i, all_tokens[sl], index)
    return Path(path)


# Small geometry so synthetic stores stay tiny; the model config is told the same shape.
TOKENS, DIM, IMAGE = 16, 32, 64
SMALL_MODEL = [f"model.geometry.tokens_per_view={TOKENS}", f"model.geometry.dim={DIM}", f"data.image_size={IMAGE}"]


def make_train_data(root: Path, episodes: int = 2, length: int = 12) -> tuple[Path, Path]:
    """(data root with libero_spatial + libero_object, a store matching libero_spatial)."""
    from data_fixtures import make_synthetic_libero

    make_synthetic_libero(root / "data", suites=("libero_spatial", "libero_object"), episodes_per_suite=episodes,
                          length=length, size=IMAGE)
    mixture = LiberoMixture("libero_spatial", root / "data", image_size=IMAGE)
    store = make_matching_store(mixture, root / "store", views=2, tokens=TOKENS, dim=DIM, shard_frames=8)
    return root / "data", store


def train_args(data: Path, store: Path | None, out: Path, compressor: str = "qformer", steps: int = 30,
               *extra: str) -> list[str]:
    """`geo3d train` on the synthetic libero_spatial with the demo preset (tiny model) and small geometry."""
    args = ["train", "--compressor", compressor, "--suite", "libero_spatial", "--data-root", str(data),
            "--config", "train/demo", "--out", str(out), "--max-steps", str(steps)]
    if store is not None:
        args += ["--store", str(store)]
    return args + SMALL_MODEL + list(extra)
