"""`tiny`: the seeded, deterministic CPU stand-in for MapAnything used by the demo and CI."""

from __future__ import annotations

from typing import Any

import torch

from geo3d.core.taps import DEFAULT_TAP, ENCODER
from geo3d.encoders.base import GeometryEncoder, state_dict_sha256
from geo3d.encoders.tiny_model import TAPS, TinyGeometryModel


class TinyEncoder(GeometryEncoder):
    """Random-init TinyGeometryModel; same input path and token pooling as the real adapter."""

    name = "tiny"
    data_norm_type = "dinov2"  # the stand-in takes MapAnything's inputs

    def __init__(self, *, width: int, depth: int, heads: int, out_dim: int, seed: int, image_size: int,
                 tokens_per_view: int, device: torch.device | str = "cpu", dtype: str = "auto",
                 tap: str = DEFAULT_TAP):
        self.config = dict(width=width, depth=depth, heads=heads, out_dim=out_dim, seed=seed)
        model = TinyGeometryModel(width, depth, heads, out_dim, seed)
        self._weights_sha256 = state_dict_sha256(model)  # computed on CPU before any device move
        super().__init__(model, image_size=image_size, tokens_per_view=tokens_per_view, device=device,
                         dtype=dtype, tap=tap)

    def available_taps(self) -> tuple[str, ...]:
        return TAPS

    def tap_dim(self, tap: str) -> int:
        return int(self.config["width"] if tap == ENCODER else self.config["out_dim"])

    def tap_features(self, views: list[torch.Tensor], taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        return self.model.features(views, taps)

    def base_identity(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": f"sha256:{self._weights_sha256}", "config": dict(self.config)}
