"""`tiny`: the seeded, deterministic CPU stand-in for MapAnything used by the demo and CI.

`init=device_random` turns it into a FLOP-faithful full-size stand-in for GPU benchmarks (width 1536, depth 20,
heads 24, out_dim 1536: ~1.13B parameters, ~1.2 TFLOP per 2-view 224^2 frame, like MapAnything): weights are
drawn on the target device and never hashed, and the identity says so (`fingerprint: unhashed:...`), so a store
made with it can never pass for a real one (recompute, eval and verify refuse to rebuild it).
"""

from __future__ import annotations

from typing import Any

import torch

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import DEFAULT_TAP, ENCODER
from geo3d.encoders.base import GeometryEncoder, state_dict_sha256
from geo3d.encoders.tiny_model import TAPS, TinyGeometryModel

TINY_INITS = ("seeded", "device_random")
UNHASHED_PREFIX = "unhashed:"  # fingerprint of weights nobody can rebuild bit for bit


class TinyEncoder(GeometryEncoder):
    """Random-init TinyGeometryModel; same input path and token pooling as the real adapter."""

    name = "tiny"
    data_norm_type = "dinov2"  # the stand-in takes MapAnything's inputs

    def __init__(self, *, width: int, depth: int, heads: int, out_dim: int, seed: int, image_size: int,
                 tokens_per_view: int, device: torch.device | str = "cpu", dtype: str = "auto",
                 init: str = "seeded", tap: str = DEFAULT_TAP):
        if init not in TINY_INITS:
            raise Geo3dError(f"encoder.tiny.init must be one of {', '.join(TINY_INITS)}, got {init!r}")
        self.config = dict(width=width, depth=depth, heads=heads, out_dim=out_dim, seed=seed)
        if init == "seeded":  # identity unchanged from before `init` existed: old stores still attach
            model = TinyGeometryModel(width, depth, heads, out_dim, seed)
            self._fingerprint = f"sha256:{state_dict_sha256(model)}"  # computed on CPU before any device move
        else:
            self.config["init"] = init
            model = TinyGeometryModel(width, depth, heads, out_dim, seed, init_device=device)
            self._fingerprint = f"{UNHASHED_PREFIX}random weights drawn on {torch.device(device).type}, not hashed"
        super().__init__(model, image_size=image_size, tokens_per_view=tokens_per_view, device=device,
                         dtype=dtype, tap=tap)

    def available_taps(self) -> tuple[str, ...]:
        return TAPS

    def tap_dim(self, tap: str) -> int:
        return int(self.config["width"] if tap == ENCODER else self.config["out_dim"])

    def tap_features(self, views: list[torch.Tensor], taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        return self.model.features(views, taps)

    def base_identity(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self._fingerprint, "config": dict(self.config)}
