"""The one encoder interface: stored LIBERO frames of V views -> tokens [B, V, T, D] bf16, plus an identity.

An encoder offers one or more taps (geo3d.core.taps: `info_sharing`, `encoder`, ...), each a per-view feature
grid of the same forward. `encode` gives the encoder's own tap (the one a store or checkpoint recorded);
`encode_taps` gives several from one forward, pooled identically (precompute writes one store per tap).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import torch

from geo3d.core.device import kernel_runtime, resolve_compute_dtype
from geo3d.core.errors import Geo3dError
from geo3d.core.provenance import RUNTIME_KEY
from geo3d.core.taps import DEFAULT_TAP, layer_description
from geo3d.encoders.views import (autocast_context, check_image_size, grid_side, normalize_views,
                                  pool_view_features, preprocessing_record)


class GeometryEncoder(ABC):
    """A frozen encoder. Subclasses provide `available_taps`, `tap_dim`, `tap_features` and `base_identity`;
    input and output handling is shared."""

    name: str
    data_norm_type: str  # how the model expects its images normalized (geo3d.encoders.views.NORM_TYPES)

    def __init__(self, model: torch.nn.Module, *, image_size: int, tokens_per_view: int,
                 device: torch.device | str, dtype: str, tap: str = DEFAULT_TAP):
        check_image_size(image_size)
        grid_side(tokens_per_view)
        self.model = model.eval().requires_grad_(False).to(device)
        self.image_size, self.tokens_per_view = image_size, tokens_per_view
        self.device = torch.device(device)
        self.dtype = resolve_compute_dtype(dtype, self.device)  # resolved, never `auto`: it is in the identity
        self.tap = self.check_tap(tap)

    @abstractmethod
    def available_taps(self) -> tuple[str, ...]:
        """The taps this model's forward can give (geo3d.core.taps)."""

    @abstractmethod
    def tap_dim(self, tap: str) -> int:
        """D of a tap's tokens."""

    @abstractmethod
    def tap_features(self, views: list[torch.Tensor], taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        """V normalized images [B,3,S,S] -> per tap, V per-view feature grids [B,D,h,w], from ONE forward that
        runs only as far as the requested taps need."""

    @abstractmethod
    def base_identity(self) -> dict[str, Any]:
        """{name, fingerprint (of the weights), config}: what makes this model what it is, tap aside."""

    def check_tap(self, tap: str) -> str:
        if tap not in self.available_taps():
            raise Geo3dError(f"encoder {self.name!r} has no tap {tap!r}; its taps: {', '.join(self.available_taps())}")
        return tap

    @property
    def dim(self) -> int:
        return self.tap_dim(self.tap)

    def view_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """This encoder's own tap: V per-view feature grids [B,D,h,w]."""
        return self.tap_features(views, (self.tap,))[self.tap]

    def identity(self, tap: str | None = None) -> dict[str, Any]:
        """What makes a tap's tokens what they are: name, tap, weight fingerprint, config (with the tapped
        layer), compute dtype. Stores of two taps of one model differ in `tap` and `config.layer`."""
        tap = self.check_tap(tap or self.tap)
        base = self.base_identity()
        return {"name": base["name"], "tap": tap, "fingerprint": base["fingerprint"],
                "config": {**base["config"], "layer": layer_description(tap)}, "compute_dtype": self.dtype}

    def runtime(self) -> dict[str, Any]:
        """Device type and kernel-relevant versions behind this encoder's bits (geo3d.core.device)."""
        return kernel_runtime(self.device)

    def store_identity(self, tap: str | None = None) -> dict[str, Any]:
        """`identity(tap)` plus the informational runtime: what a store records (attach compares without it)."""
        return {**self.identity(tap), RUNTIME_KEY: self.runtime()}

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
        """uint8 [B,V,S,S,3] upright + resized frames -> bf16 [B,V,T,D] of this encoder's tap, on its device.

        Every view of a timestep is encoded together, in stored order (agentview first).
        """
        return self.encode_taps(images, (self.tap,))[self.tap]

    def encode_taps(self, images: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Several taps from one forward, each pooled exactly as `encode` pools it (the same function)."""
        for t in taps:
            self.check_tap(t)
        with torch.inference_mode(), autocast_context(self.device, self.dtype):
            feats = self.tap_features(self.model_inputs(images), tuple(taps))
            return {t: pool_view_features(feats[t], self.tokens_per_view) for t in taps}


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of the weights actually loaded (names, shapes, dtypes and bytes), independent of files."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
