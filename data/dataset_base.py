"""What every source-format reader shares (LeRobot folders, LIBERO HDF5 folders): a path and episodes by index."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from geo3d.core.errors import DataError


class EpisodeDataset:
    """Base of the readers behind `LiberoMixture`: subclasses set `self.path` and `self._episodes` {index: info}."""

    path: Path
    _episodes: dict[int, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def episode(self, episode_index: int) -> Any:
        try:
            return self._episodes[episode_index]
        except KeyError:
            raise DataError(f"{self.path}: no episode {episode_index} (has {self.num_episodes})") from None


# -- per-frame content identity --------------------------------------------------------------------------------
# A hash of the decoded pixels of both cameras as stored: stage 1 records it per frame; `verify-cache --deep` and
# stage 2 recompute it to notice that the dataset (or the decoder's output) changed under a cache. Decoded pixels,
# not file bytes: independent of container details, dependent on the decoder (a different AV1 build producing
# different pixels is, correctly, reported as a change).
def frame_content_id(frames_as_stored: np.ndarray) -> int:
    """uint8 [V,H,W,3] -> 64-bit id (blake2b-8 of shape + bytes), an int in [0, 2**64) storable as uint64."""
    arr = np.ascontiguousarray(frames_as_stored)
    if arr.dtype != np.uint8:
        raise ValueError(f"frame_content_id expects uint8 frames as stored, got {arr.dtype}")
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
    h.update(memoryview(arr).cast("B"))
    return int.from_bytes(h.digest(), "little")
