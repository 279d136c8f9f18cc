"""The image path and token post-processing shared by every geometry encoder.

Both the tiny stand-in and the real MapAnything adapter go through these functions, so CI exercises the exact
code that turns LIBERO frames into model inputs and model outputs into stored tokens.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geo3d.core.errors import Geo3dError
from geo3d.data.lerobot_layout import VIEW_NAMES
from geo3d.data.orientation import orientation_probe
from geo3d.data.transforms import UPRIGHT, to_model_images

PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF, _ZERO, _ONE = (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
# data_norm_type -> (mean, std) on [0,1] images: uniception.models.encoders.image_normalizations
# .IMAGE_NORMALIZATION_DICT (uniception 0.1.7, the table MapAnything's encoders are trained with).
NORM_TYPES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    **{t: (IMAGENET_MEAN, IMAGENET_STD) for t in ("croco", "dune", "dinov2", "dinov3", "patch_embedder", "roma",
                                                  "pixio")},
    **{t: (_HALF, _HALF) for t in ("dust3r", "perception_encoder")},
    **{t: (_ZERO, _ONE) for t in ("dummy", "identity", "radio")},
    **{t: (_ZERO, (1 / 255,) * 3) for t in ("sea_raft", "unimatch")},  # 0-255 inputs in fp32
    "cosmos": (_ZERO, _HALF),
}


def check_image_size(image_size: int, patch_size: int = PATCH_SIZE) -> None:
    """MapAnything's ViT needs sides that are multiples of the patch; fail early with the nearest valid sizes."""
    if image_size <= 0 or image_size % patch_size:
        lo = max(patch_size, image_size // patch_size * patch_size)
        raise Geo3dError(f"image size {image_size} is not a multiple of the patch size {patch_size}; "
                         f"use e.g. {lo} or {lo + patch_size} (224 gives 16x16 patches per view)")


def grid_side(tokens_per_view: int) -> int:
    """Tokens per view are a square grid (196 = 14x14) pooled from the patch grid."""
    side = math.isqrt(tokens_per_view)
    if side * side != tokens_per_view or side == 0:
        raise Geo3dError(f"encoder.tokens_per_view={tokens_per_view} is not a square number (e.g. 196 = 14x14)")
    return side


def frames_to_model_input(frames: np.ndarray, image_size: int, orientation: str) -> np.ndarray:
    """Frames uint8 [V,H,W,3] as their reader stores them (`orientation`) -> upright, resized uint8 [V,S,S,3].

    Runs in decode workers (numpy, cheap) so the device only sees fixed-size uint8 batches.
    """
    check_image_size(image_size)
    return np.ascontiguousarray(to_model_images(frames, image_size, orientation))


def norm_mean_std(data_norm_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a model's `data_norm_type`; an unknown type is refused (a guess gives wrong tokens)."""
    if data_norm_type not in NORM_TYPES:
        raise Geo3dError(f"unknown image normalization data_norm_type={data_norm_type!r} (from the encoder); "
                         f"known: {', '.join(sorted(NORM_TYPES))}. Add its mean/std to "
                         "geo3d.encoders.views.NORM_TYPES from uniception's IMAGE_NORMALIZATION_DICT")
    return NORM_TYPES[data_norm_type]


@functools.lru_cache(maxsize=64)
def norm_tensors(data_norm_type: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1,1,3,1,1] on `device`, built once per (type, device, dtype): a tensor built from Python
    floats on every batch is a host->device copy and a stream sync per batch on CUDA."""
    mean_v, std_v = norm_mean_std(data_norm_type)
    with torch.inference_mode(False):  # normal tensors even when first built under encode()'s inference mode
        return tuple(torch.tensor(v, dtype=dtype).view(1, 1, 3, 1, 1).to(device) for v in (mean_v, std_v))


def normalize_views(images: torch.Tensor, device: torch.device | str, data_norm_type: str) -> list[torch.Tensor]:
    """uint8 [B,V,S,S,3] -> V tensors [B,3,S,S] float32, normalized as the model's `data_norm_type` says."""
    if images.dim() != 5 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B,V,S,S,3], got {tuple(images.shape)}")
    x = images.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255.0)
    mean, std = norm_tensors(data_norm_type, x.device, x.dtype)
    x = (x - mean) / std
    return [x[:, v].contiguous() for v in range(x.shape[1])]


def pool_view_features(features: Sequence[torch.Tensor], tokens_per_view: int) -> torch.Tensor:
    """Per-view grids [B,D,h,w] -> stored tokens bf16 [B,V,T,D] (adaptive average pool to sqrt(T) x sqrt(T)).

    Pooling runs in float32 so the only rounding is the final cast to bf16.
    """
    side = grid_side(tokens_per_view)
    pooled = []
    for f in features:
        g = F.adaptive_avg_pool2d(f.float(), (side, side))  # [B,D,s,s]
        pooled.append(g.flatten(2).transpose(1, 2))  # [B,T,D] row-major over the grid
    return torch.stack(pooled, dim=1).to(torch.bfloat16).contiguous()


def image_path_probe(image_size: int, stored_size: int = 256) -> dict[str, str]:
    """What the image path actually does, measured on a fixed pattern: the orientation it applies to each
    declared frame orientation and a hash of its output for upright frames. Recorded in the store, so
    changing the orientation or `resize` makes old stores refuse to resume (old ones say "rot180")."""
    yy, xx = np.mgrid[0:stored_size, 0:stored_size]
    pattern = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
    stored = np.stack([pattern, pattern[::-1]])  # [V=2, H, W, 3]
    out = frames_to_model_input(stored, image_size, UPRIGHT)
    return {**orientation_probe(), "sha256": hashlib.sha256(out.tobytes()).hexdigest()[:16],
            "stored_size": str(stored_size)}


def preprocessing_record(image_size: int, tokens_per_view: int, autocast_dtype: str,
                         data_norm_type: str) -> dict[str, Any]:
    """What was done to a frame before and after the model: written into the store and compared on reopen."""
    side = image_size // PATCH_SIZE
    t_side = grid_side(tokens_per_view)
    mean, std = norm_mean_std(data_norm_type)
    return {
        "views": list(VIEW_NAMES),  # camera order of every stored frame; the model sees view 0 as reference
        "orientation": "geo3d.data.transforms.to_model_images: upright frames unturned, raw renders turned 180",
        "image_path_probe": image_path_probe(image_size),
        "resize": {"size": [image_size, image_size], "fn": "geo3d.data.transforms.resize"},
        "normalize": {"mean": list(mean), "std": list(std), "data_norm_type": data_norm_type},
        "patch_size": PATCH_SIZE,
        "patch_grid": [side, side],
        "token_pool": {"fn": "adaptive_avg_pool2d", "grid": [t_side, t_side], "tokens_per_view": tokens_per_view},
        "autocast_dtype": autocast_dtype,
        "stored_dtype": "bfloat16",
    }


def autocast_context(device: torch.device, dtype: str):
    """bf16 autocast on the device, or none for float32 (`dtype` is already resolved: geo3d.core.device)."""
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    if dtype != "bfloat16":
        raise Geo3dError(f"encoder dtype must be bfloat16 or float32, got {dtype!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)
