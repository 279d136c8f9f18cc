"""Load a trained policy from a checkpoint directory alone and predict unnormalized action chunks.

A checkpoint dir (checkpoints/steps_<N>/) holds the weights, config.yaml and norm_stats.json; a run dir is
accepted too (its latest checkpoint is used). Geometry tokens for a live frame come from the caller
(`geometry=`) or from a `geometry_encoder` object with `.encode(images uint8 [B,V,S,S,3]) -> [B,V,T,D]`
(precompute's encoders have it); `train` itself never imports the encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from geo3d.errors import Geo3dError
from train.checkpoint import latest_checkpoint, read_marker
from train.precision import inference_autocast


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory's latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise Geo3dError(f"checkpoint not found: {p}; pass a run directory (its latest checkpoint is used) or one "
                         f"of its checkpoints/steps_<N> directories")
    if (p / "checkpoint.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise Geo3dError(f"{p} has no complete checkpoint (expected checkpoints/steps_<N>/checkpoint.json); train "
                         f"until a checkpoint is saved (train.save_interval) or pass another run directory")
    return latest


class LoadedPolicy:
    """A policy ready for closed-loop control: upright images + instruction + state -> raw actions [8,7]."""

    def __init__(self, policy: Any, normalizer: Any, cfg: Any, ckpt_dir: Path, marker: dict[str, Any],
                 geometry_encoder: Any = None) -> None:
        self.policy = policy
        self.normalizer = normalizer
        self.cfg = cfg
        self.checkpoint = str(ckpt_dir)
        self.step = int(marker["step"])
        self.compressor = str(cfg.model.compressor.type)
        self.image_size = int(cfg.data.image_size)
        self.num_views = int(cfg.model.geometry.views)
        self.store = marker.get("store")  # encoder identity + preprocessing the run's tokens came from
        self.geometry_encoder = geometry_encoder
        self.device = next(policy.parameters()).device

    @property
    def needs_geometry(self) -> bool:
        return self.compressor != "none"

    def _images(self, images: Any) -> np.ndarray:
        from geo3d.data.transforms import resize
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[0] != self.num_views or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise Geo3dError(f"images must be uint8 [{self.num_views},H,W,3] upright (agentview, wrist); got "
                             f"{arr.dtype} {arr.shape}")
        if arr.shape[1:3] != (self.image_size, self.image_size):
            arr = np.stack([resize(v, self.image_size) for v in arr])
        return arr

    def _geometry(self, images: np.ndarray, geometry: Any) -> torch.Tensor | None:
        if not self.needs_geometry:
            return None
        if geometry is None:
            if self.geometry_encoder is None:
                raise Geo3dError(f"compressor {self.compressor!r} needs geometry tokens: pass geometry= "
                                 f"[V,T,D] or load_policy(..., geometry_encoder=<the encoder recorded in "
                                 f"checkpoint.json 'store.encoder'>)")
            geometry = self.geometry_encoder.encode(torch.from_numpy(images[None]))[0]
        g = torch.as_tensor(geometry)
        g = g.reshape(1, -1, g.shape[-1]) if g.dim() == 3 else g
        return g.to(self.device)

    @torch.no_grad()
    def predict_action(self, images: Any, instruction: str, state: Any, geometry: Any = None) -> np.ndarray:
        """images uint8 [V,H,W,3] upright; state [8]; geometry [V,T,D] (optional, see module doc) ->
        unnormalized float32 actions [horizon, 7] (gripper in the dataset convention)."""
        imgs = self._images(images)
        batch = dict(self.policy.processor(imgs[None], [instruction]))
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["geometry"] = self._geometry(imgs, geometry)
        batch["state"] = torch.as_tensor(np.asarray(state, dtype=np.float32)).reshape(1, -1).to(self.device)
        with inference_autocast(self.cfg.train.get("mixed_precision", "auto"), self.device):
            normalized = self.policy.predict_action(batch)[0].float().cpu().numpy()
        return np.asarray(self.normalizer.unnormalize(normalized), dtype=np.float32)


def load_policy(ckpt_dir: str | Path, device: str = "cpu", geometry_encoder: Any = None) -> LoadedPolicy:
    """Rebuild the policy from config.yaml, load steps_<N>_pytorch_model.pt and norm_stats.json."""
    from geo3d.data.norm_stats import ActionNormalizer, load_norm_stats
    from train.modeling.policy import build_policy
    ckpt = resolve_checkpoint(ckpt_dir)
    marker = read_marker(ckpt)
    cfg = OmegaConf.load(ckpt / "config.yaml")
    policy = build_policy(cfg.model, device=device)
    weights = torch.load(ckpt / marker["weights"], map_location=device, weights_only=True)
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise Geo3dError(f"checkpoint {ckpt} does not fit the model its config builds: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    policy.eval()
    normalizer = ActionNormalizer(load_norm_stats(ckpt / "norm_stats.json"))
    return LoadedPolicy(policy, normalizer, cfg, ckpt, marker, geometry_encoder)
