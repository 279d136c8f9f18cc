"""Training samples: a LIBERO frame (images, instruction, state, action chunk) joined with its cached
geometry tokens from the features store, by the shared global frame index.

The store is opened lazily in each DataLoader worker (never in the parent before fork). Samples stay raw;
the collate (`TrainCollator`, in the workers) runs the policy's processor (`PolicyProcessor`): tokenization, state and
action normalization (policy/processor_policy.py), the same processor inference uses.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from geo3d.features_store import FeatureReader


class GeoTrainDataset(Dataset):
    """`ds[i]` -> dict(images uint8 [V,S,S,3], instruction, state float32 [8] raw, actions float32 [8,7]
    raw, action_pad bool [8], index, geometry bf16 [V,T,D] or absent when `store_path` is None)."""

    def __init__(self, mixture: Any, store_path: str | None) -> None:
        self.mixture = mixture
        self.store_path = store_path
        self._reader: Any = None

    def __len__(self) -> int:
        return len(self.mixture)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # each worker opens its own handle
        return state

    def reader(self) -> Any:
        if self._reader is None:
            self._reader = FeatureReader(self.store_path)
        return self._reader

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.mixture[i]
        out = {
            "images": np.asarray(s["images"], dtype=np.uint8),
            "instruction": s["instruction"],
            "state": np.asarray(s["state"], dtype=np.float32),
            "actions": np.asarray(s["actions"], dtype=np.float32),
            "action_pad": np.asarray(s["action_pad"], dtype=bool),
            "index": int(s.get("global_index", i)),
        }
        if self.store_path is not None:
            out["geometry"] = self.reader()[i]
        return out


class TrainCollator:
    """Stacks samples into the policy's batch through the policy's processor: VLM inputs + normalized state [B,8] +
    normalized actions [B,8,7] + geometry [B,V*T,D] (None when the run has no geometry) + action_pad [B,8] +
    index [B]."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor  # geo3d.policy.processor_policy.PolicyProcessor

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        images = np.stack([s["images"] for s in samples])
        batch = self.processor.preprocess(images, [s["instruction"] for s in samples],
                                         np.stack([s["state"] for s in samples]))
        actions = self.processor.normalize_actions(np.stack([s["actions"] for s in samples]))
        batch["actions"] = torch.from_numpy(actions)
        batch["action_pad"] = torch.from_numpy(np.stack([s["action_pad"] for s in samples]))
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        if "geometry" in samples[0]:
            geom = torch.stack([s["geometry"] for s in samples])  # [B,V,T,D]
            batch["geometry"] = geom.reshape(geom.shape[0], -1, geom.shape[-1])
        else:
            batch["geometry"] = None
        return batch


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to `device` (geometry keeps bf16; the policy casts it to the compressor's dtype)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
