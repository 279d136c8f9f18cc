"""Geometry encoders: `tiny` (CPU stand-in) and `mapanything` (the real frozen model). Same interface."""

from __future__ import annotations

from typing import Any

import torch

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import DEFAULT_TAP
from geo3d.encoders.base import GeometryEncoder
from geo3d.encoders.mapanything import MapAnythingEncoder, preflight
from geo3d.encoders.tiny import TinyEncoder
from geo3d.encoders.views import check_image_size, grid_side

ENCODER_NAMES = ("tiny", "mapanything")


def preflight_encoder(enc_cfg: Any, image_size: int) -> None:
    """Cheap checks before any slow work: image size, and for MapAnything weights dir, package and hub code."""
    check_image_size(image_size)
    grid_side(int(enc_cfg.tokens_per_view))
    if enc_cfg.name == "mapanything":
        preflight(enc_cfg.mapanything.weights)
    elif enc_cfg.name not in ENCODER_NAMES:
        raise Geo3dError(f"unknown encoder {enc_cfg.name!r}; choose one of {', '.join(ENCODER_NAMES)}")


def build_encoder(enc_cfg: Any, image_size: int, device: torch.device | str, tap: str = DEFAULT_TAP) -> GeometryEncoder:
    """Build the encoder named by `encoder.name` from the `encoder` config section; `tap` is what `encode` gives
    (`encode_taps` gives any of `available_taps()` from the same forward)."""
    name = enc_cfg.name
    tokens = int(enc_cfg.tokens_per_view)
    if name == "tiny":
        t = enc_cfg.tiny
        return TinyEncoder(width=int(t.width), depth=int(t.depth), heads=int(t.heads), out_dim=int(t.out_dim),
                           seed=int(t.seed), image_size=image_size, tokens_per_view=tokens, device=device,
                           dtype=str(t.dtype), init=str(t.init), tap=tap)
    if name == "mapanything":
        m = enc_cfg.mapanything
        return MapAnythingEncoder(weights=m.weights, image_size=image_size, tokens_per_view=tokens,
                                  device=device, dtype=str(m.dtype), tap=tap)
    raise Geo3dError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
