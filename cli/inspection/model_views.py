"""Model input tensors -> the uint8 images they hold (the inverse of the models' own normalization).

Nothing here prepares inputs: the tensors come from the real processor / encoder; these functions only undo
the last, invertible steps (patchify, rescale, mean/std) so a PNG shows what the model actually got.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float pixels on the 0..255 scale -> uint8 (rounded, clipped)."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def vlm_images(vlm_inputs: dict[str, Any], image_processor: Any) -> list[np.ndarray]:
    """Qwen2.5-VL `pixel_values` [sum t*h*w, C*T*P*P] + `image_grid_thw` -> per image uint8 [H,W,3].

    Undoes the image processor's patchify (rows (h/m, w/m, m, m), patch dim (C, T, P, P)), its mean/std and its
    rescale; the T temporal copies of a still image are identical, the first is shown.
    """
    ip = image_processor
    pv = vlm_inputs["pixel_values"].detach().float().cpu().numpy()
    grids = vlm_inputs["image_grid_thw"].tolist()
    p, m, tp = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    mean, std = np.asarray(ip.image_mean, np.float64), np.asarray(ip.image_std, np.float64)
    out, start = [], 0
    for t, h, w in grids:
        x = pv[start:start + t * h * w].reshape(t, h // m, w // m, m, m, 3, tp, p, p)[0, ..., 0, :, :]
        start += t * h * w
        chw = x.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, h * p, w * p)
        out.append(to_uint8((chw.transpose(1, 2, 0) * std + mean) / float(ip.rescale_factor)))
    if start != len(pv):
        raise ValueError(f"image_grid_thw covers {start} patch rows but pixel_values has {len(pv)}")
    return out


def encoder_images(views: Sequence[torch.Tensor],
                   mean_std: tuple[Sequence[float], Sequence[float]]) -> list[np.ndarray]:
    """The geometry encoder's normalized views (V x [1,3,S,S]) -> V uint8 [S,S,3]."""
    mean, std = (np.asarray(v, np.float64) for v in mean_std)
    return [to_uint8((v[0].detach().float().cpu().numpy().transpose(1, 2, 0) * std + mean) * 255.0) for v in views]
