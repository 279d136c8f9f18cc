"""Simulator observation -> policy inputs, through THE training image path.

Training sees LeRobot frames as stored (upright) through `geo3d.data.transforms.to_model_images`. Evaluation
sends each raw simulator render (orientation `raw_render`) through the same function, which turns it
180 degrees exactly once: one path, so a policy never sees a frame oriented or scaled differently at test time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geo3d.core.sim import raw_frames, state_from_obs
from geo3d.data.transforms import RAW_RENDER, UPRIGHT, to_model_images


def fit_views(images: np.ndarray, size: int | None) -> np.ndarray:
    """Upright views [V,H,W,3] -> size x size through the one image path (no-op if already there)."""
    return to_model_images(images, size, UPRIGHT)


def observation_to_inputs(obs: dict[str, Any], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [2,size,size,3] as the model saw them in training, state float32 [8]) from one
    simulator observation (state as the LIBERO datasets store it: eef pos, axis-angle, gripper qpos)."""
    return to_model_images(raw_frames(obs), size, RAW_RENDER), state_from_obs(obs)


def upright_frame(obs: dict[str, Any]) -> np.ndarray:
    """Full-resolution agentview | wrist, side by side, as the model sees them (for rollout videos)."""
    return np.concatenate(list(to_model_images(raw_frames(obs), None, RAW_RENDER)), axis=1)
