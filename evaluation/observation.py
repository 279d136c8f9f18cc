"""Simulator observation -> policy inputs, through THE training image path.

Training sees dataset frames as stored, turned by `geo3d.data.transforms.upright` and resized by its
`resize`. Evaluation first maps each simulator render to the dataset's stored orientation with the same
function the demo-dataset generator uses (`geo3d.sim.frames_as_stored`), then applies the same
`to_model_images`: one path, so a policy never sees a frame oriented or scaled differently at test time.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_views(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize upright views [V,H,W,3] to size x size with the training resize (no-op if already there)."""
    from geo3d.data.transforms import resize

    return resize(images, size)


def observation_to_inputs(obs: dict[str, Any], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [2,size,size,3] as the model saw them in training, state float32 [8]) from one
    simulator observation (state as the LIBERO datasets store it: eef pos, axis-angle, gripper qpos)."""
    from geo3d.data.transforms import to_model_images
    from geo3d.sim import frames_as_stored, state_from_obs

    stored = np.stack(frames_as_stored(obs))
    return to_model_images(stored, size), state_from_obs(obs)


def upright_frame(obs: dict[str, Any]) -> np.ndarray:
    """Full-resolution agentview | wrist, side by side, as the model sees them (for rollout videos)."""
    from geo3d.data.transforms import upright
    from geo3d.sim import frames_as_stored

    return np.concatenate([upright(f) for f in frames_as_stored(obs)], axis=1)
