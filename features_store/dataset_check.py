"""The one store-vs-dataset check, used by `geo3d verify-cache` (reported as faults) and by `geo3d train`
(refused before any model is built): does this store hold the frames of this dataset, in this order?

Compares frame count, the dataset identity recorded at precompute vs `mixture.identity()`, the view order,
and every committed frame's (dataset_id, episode_index, frame_index). The dataset is any object with the
`LiberoMixture` surface (len, identity(), dataset_id/episode_index/frame_index arrays); this module does not
import the data layer, so the store stays below both stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from geo3d.core.provenance import plain_json
from geo3d.data.lerobot_layout import VIEW_NAMES
from geo3d.features_store.array_layout import INT_INDEX
from geo3d.features_store.spec import StoreSpec, diff_specs


@dataclass(frozen=True)
class DatasetDifference:
    """One way the store and the dataset disagree; `frames` are the global indices concerned (may be empty)."""

    kind: str  # "dataset" (the store belongs to another dataset) | "index" (per-frame map differs)
    message: str
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def dataset_differences(spec: StoreSpec, index: Mapping[str, np.ndarray], live: np.ndarray,
                        mixture: Any) -> list[DatasetDifference]:
    """Every difference between the store (`spec`, its per-frame `index` arrays, `live` = committed mask) and
    `mixture`. Another suite, or a frame-count mismatch, is reported alone: the frame maps cannot be aligned then."""
    theirs, ours = dict(spec.dataset).get("suite"), getattr(mixture, "suite", None)
    if theirs is not None and ours is not None and theirs != ours:
        return [DatasetDifference("dataset", f"this store holds {theirs}; the run asks for {ours}: pass --suite "
                                  f"{theirs}, or precompute a store for {ours} (geo3d precompute --suite {ours})")]
    if len(mixture) != spec.frames:
        return [DatasetDifference("dataset", f"frames: store has {spec.frames}, dataset on disk has {len(mixture)}; "
                                  "the store belongs to another dataset version: re-run precompute into a new store")]
    out = [DatasetDifference("dataset", "dataset identity " + d.replace("requested", "dataset on disk has"))
           for d in diff_specs(dict(spec.dataset), plain_json(mixture.identity(), stringify=True))]
    stored_views = dict(spec.preprocessing).get("views")
    if stored_views is not None and list(stored_views) != list(VIEW_NAMES):
        out.append(DatasetDifference("dataset", f"view order: store has {list(stored_views)}, dataset and policy "
                                     f"use {list(VIEW_NAMES)}"))
    for key in INT_INDEX:
        ours = np.asarray(index[key], dtype=np.int64)
        theirs = np.asarray(getattr(mixture, key), dtype=np.int64)
        bad = np.flatnonzero(live & (ours != theirs))
        if len(bad):
            i = int(bad[0])
            out.append(DatasetDifference("index", f"{key} of {len(bad)} frame(s) differs from the dataset on disk "
                                         f"(first: frame {i}, store {ours[i]}, dataset {theirs[i]})", bad))
    return out
