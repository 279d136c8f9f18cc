"""The one image path shared by precompute, train and eval: stored frames -> upright -> resized.

LIBERO LeRobot datasets store frames rotated 180 degrees relative to the simulator's upright view;
every consumer goes through `upright` then `resize` here so the geometry tokens cached by stage 1,
the images seen in training and the images seen at evaluation are produced identically.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def upright(img: np.ndarray) -> np.ndarray:
    """Rotate 180 degrees (flip rows and columns) of [H,W,C] or [...,H,W,C]; returns a contiguous copy."""
    if img.ndim < 3:
        raise ValueError(f"expected [..., H, W, C] image(s), got shape {img.shape}")
    return np.ascontiguousarray(img[..., ::-1, ::-1, :])


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


def to_model_images(frames_as_stored: np.ndarray, size: int | None) -> np.ndarray:
    """Stored frames uint8 [V,H,W,3] -> upright, resized uint8 [V,S,S,3] (what models consume)."""
    return resize(upright(frames_as_stored), size)
