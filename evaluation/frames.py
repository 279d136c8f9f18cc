"""Simulator observation -> policy inputs, through THE training image path.

Training sees frames as stored in the dataset (rotated 180 degrees, like the users' LeRobot data), turned
upright and resized by `geo3d.data.transforms`. Evaluation maps each simulator frame to the stored
orientation with the same function the demo-dataset generator used (`geo3d.sim`), then applies the same
`upright` and `resize`: one path, so a policy never sees a frame oriented or scaled differently at test time.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_views(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize upright views [V,H,W,3] to size x size with the training resize (no-op if already there)."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    from geo3d.data.transforms import resize

    return np.stack([np.asarray(resize(v, size), dtype=np.uint8) for v in images])


def policy_images(stored_views: list[np.ndarray], size: int) -> np.ndarray:
    """Frames in the dataset's stored orientation -> uint8 [V,size,size,3] upright, as in training."""
    from geo3d.data.transforms import upright

    views = np.stack([np.asarray(upright(v), dtype=np.uint8) for v in stored_views])
    return fit_views(views, size)


def observation_to_inputs(obs: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [2,size,size,3] upright, state float32 [8]) from one simulator observation."""
    from geo3d import sim

    agent, wrist = sim.stored_frames(obs)
    state = np.asarray(sim.dataset_state(obs), dtype=np.float32)
    return policy_images([agent, wrist], size), state
