"""The one image path shared by precompute, train, eval and inspect: frames -> model orientation -> resized.

Each source format declares how its frames are stored (`FRAME_ORIENTATION` on the reader):
- `upright`: LIBERO LeRobot datasets. openvla turned every raw simulator render 180 degrees when it built the
  RLDS data and the LeRobot conversions copied those images, so they reach the models unturned;
- `raw_render`: the simulator's own render (robosuite draws it upside down): eval, demo-data generation and
  LIBERO HDF5 files. It is turned 180 degrees exactly once, here, as openvla/openpi/StarVLA do at evaluation
  (`obs["agentview_image"][::-1, ::-1]`).
Every consumer goes through `to_model_images`, so the geometry tokens cached by stage 1, the images seen in
training and the images seen at evaluation are produced identically.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

UPRIGHT = "upright"
RAW_RENDER = "raw_render"
ORIENTATIONS = (UPRIGHT, RAW_RENDER)


def turn_180(img: np.ndarray) -> np.ndarray:
    """Rotate 180 degrees (flip rows and columns) of [H,W,C] or [...,H,W,C]; returns a contiguous copy."""
    if img.ndim < 3:
        raise ValueError(f"expected [..., H, W, C] image(s), got shape {img.shape}")
    return np.ascontiguousarray(img[..., ::-1, ::-1, :])


def to_upright(frames: np.ndarray, orientation: str) -> np.ndarray:
    """Frames stored with `orientation` -> upright (the models' convention); upright frames are returned as is."""
    if orientation == UPRIGHT:
        return frames
    if orientation == RAW_RENDER:
        return turn_180(frames)
    raise ValueError(f"unknown frame orientation {orientation!r}; a reader declares one of {ORIENTATIONS}")


def resize(img: np.ndarray, size: int | None) -> np.ndarray:
    """Square-resize uint8 [H,W,3] or [...,H,W,3] with PIL bilinear (antialiased when shrinking).

    size None (or equal to the current size) returns the input unchanged.
    """
    if size is None or img.shape[-3:-1] == (size, size):
        return img
    if img.ndim == 3:
        return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    flat = img.reshape(-1, *img.shape[-3:])
    out = np.stack([resize(x, size) for x in flat])
    return out.reshape(*img.shape[:-3], size, size, img.shape[-1])


def to_model_images(frames: np.ndarray, size: int | None, orientation: str) -> np.ndarray:
    """Frames uint8 [V,H,W,3] stored with `orientation` -> upright, resized uint8 [V,S,S,3] (what models consume)."""
    return resize(to_upright(frames, orientation), size)
