"""The one encoder interface: stored LIBERO frames of V views -> tokens [B, V, T, D] bf16, plus an identity."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import torch

from geo3d.core.device import kernel_runtime, resolve_compute_dtype
from geo3d.core.provenance import RUNTIME_KEY
from geo3d.encoders.views import (autocast_context, check_image_size, grid_side, normalize_views,
                                  pool_view_features, preprocessing_record)


class GeometryEncoder(ABC):
    """A frozen encoder. Subclasses provide `view_features`; input and output handling is shared."""

    name: str
    data_norm_type: str  # how the model expects its images normalized (geo3d.encoders.views.NORM_TYPES)

    def __init__(self, model: torch.nn.Module, *, image_size: int, tokens_per_view: int, dim: int,
                 device: torch.device | str, dtype: str):
        check_image_size(image_size)
        grid_side(tokens_per_view)
        self.model = model.eval().requires_grad_(False).to(device)
        self.image_size, self.tokens_per_view, self.dim = image_size, tokens_per_view, dim
        self.device = torch.device(device)
        self.dtype = resolve_compute_dtype(dtype, self.device)  # resolved, never `auto`: it is in the identity

    @abstractmethod
    def view_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """V normalized images [B,3,S,S] -> V per-view feature grids [B,D,h,w] (the model's final features)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes this encoder's tokens what they are (name, config, weight fingerprint)."""

    def runtime(self) -> dict[str, Any]:
        """Device type and kernel-relevant versions behind this encoder's bits (geo3d.core.device)."""
        return kernel_runtime(self.device)

    def store_identity(self) -> dict[str, Any]:
        """`identity()` plus the informational runtime: what a store records (attach compares without it)."""
        return {**self.identity(), RUNTIME_KEY: self.runtime()}

    def versions(self) -> dict[str, str | None]:
        """Versions of the code behind the model (recorded in each shard's commit marker)."""
        return {"torch": torch.__version__}

    def preprocessing(self) -> dict[str, Any]:
        return preprocessing_record(self.image_size, self.tokens_per_view, self.dtype, self.data_norm_type)

    def model_inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 [B,V,S,S,3] upright + resized frames -> the V normalized views [B,3,S,S] the model receives."""
        if images.shape[2] != self.image_size or images.shape[3] != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[2:4])}, encoder expects {self.image_size}")
        return normalize_views(images, self.device, self.data_norm_type)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,V,S,S,3] upright + resized frames -> bf16 [B,V,T,D] on the encoder's device.

        Every view of a timestep is encoded together, in stored order (agentview first).
        """
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            feats = self.view_features(self.model_inputs(images))
            return pool_view_features(feats, self.tokens_per_view)


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of the weights actually loaded (names, shapes, dtypes and bytes), independent of files."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
