"""Refuse to train on a features store that does not belong to the dataset (or to the model) — before
any model is built or step taken — and say exactly what differs.

Checks: the store-vs-dataset check shared with verify-cache (geo3d.features_store.dataset_check: frame count,
dataset identity, view order, frame map); completeness; the per-frame content identity on a spread sample
of frames; the token shape vs `model.geometry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from geo3d.core.errors import StoreError
from geo3d.data.dataset_base import frame_content_id
from geo3d.features_store.dataset_check import dataset_differences
from geo3d.features_store.store import describe_trial


def check_token_shape(spec: Any, geometry_cfg: Mapping[str, Any], store_path: str | Path) -> None:
    """The store's [V,T,D] must equal model.geometry.{views,tokens_per_view,dim}."""
    store_shape = (int(spec.views), int(spec.tokens), int(spec.dim))
    model_shape = (int(geometry_cfg["views"]), int(geometry_cfg["tokens_per_view"]), int(geometry_cfg["dim"]))
    if store_shape != model_shape:
        raise StoreError(
            f"store {store_path} holds tokens [V,T,D]={list(store_shape)} but the model expects "
            f"model.geometry (views, tokens_per_view, dim)={list(model_shape)}; use a store made with the matching "
            f"encoder, or set model.geometry.views/tokens_per_view/dim to the store's shape")


def sample_frames(num_frames: int, count: int) -> list[int]:
    """A deterministic spread (first, last, and evenly spaced between) of `count` frame indices."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted(set(np.linspace(0, num_frames - 1, count).round().astype(int).tolist()))


def check_store_matches_dataset(reader: Any, mixture: Any, store_path: str | Path, check_frames: int) -> None:
    """The store must belong to this dataset (geo3d.features_store.dataset_check, the same check verify-cache runs),
    be complete, and the content identities of sampled frames must agree."""
    spec = reader.spec
    index = {k: getattr(reader, k) for k in ("dataset_id", "episode_index", "frame_index")}
    problems = [d.message for d in dataset_differences(spec, index, reader.committed_mask(), mixture)]
    if len(problems) == 1 and problems[0].startswith("this store holds"):  # another suite: that says it all
        raise StoreError(f"store {store_path}: {problems[0]}")
    if problems:
        raise StoreError(f"store {store_path} was not made from this dataset ({_suite_of(mixture)}):\n  "
                         + "\n  ".join(problems)
                         + "\nrun `geo3d precompute` for this suite/data root, or pass the matching --store")
    if not reader.complete:
        trial = describe_trial(store_path)
        if trial:
            raise StoreError(f"store {store_path} is {trial}")
        missing = int((~reader.committed_mask()).sum())
        raise StoreError(f"store {store_path} is incomplete: {missing} of {spec.frames} frames are not committed; "
                         f"finish `geo3d precompute --store {store_path}` (it resumes) before training")
    bad = [i for i in sample_frames(len(mixture), check_frames)
           if _store_content_id(reader, i) != _dataset_content_id(mixture, i)]
    if bad:
        raise StoreError(f"store {store_path}: the content identity of {len(bad)} of the sampled frames differs "
                         f"from the dataset's (first: frame {bad[0]}); the dataset changed after the store was "
                         f"made. Re-run `geo3d precompute`, or `geo3d verify-cache --deep` to see the damage")


def _suite_of(mixture: Any) -> str:
    return str(getattr(mixture, "suite", "?"))


def _store_content_id(reader: Any, i: int) -> int:
    return int(reader.content_id[i])


def _dataset_content_id(mixture: Any, i: int) -> Any:
    return int(frame_content_id(mixture.read_stored_frames(i)))
