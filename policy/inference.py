"""Load a trained policy from a checkpoint directory alone and predict unnormalized action chunks.

A checkpoint dir (checkpoints/steps_<N>/, layout in train/checkpoint.py) holds everything: weights, config,
the VLM architecture and the processor pipeline; a run dir is accepted too (its latest checkpoint is used).
Geometry tokens for a live frame come from the caller (`geometry=`) or from a `geometry_encoder` object with
`.encode(images uint8 [B,V,S,S,3]) -> [B,V,T,D]` (precompute's encoders have it); `train` itself never imports
the encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from geo3d.core.errors import Geo3dError
from geo3d.train.checkpoint import latest_checkpoint, read_marker
from geo3d.train.precision import inference_autocast

__all__ = ["LoadedPolicy", "load_policy", "read_marker", "resolve_checkpoint"]  # what evaluation may use


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
    """A policy ready for closed-loop control: upright images + instruction + raw state -> raw actions [8,7],
    through the checkpoint's own processor pipeline (tokenize, normalize state; unnormalize actions)."""

    def __init__(self, policy: Any, pipeline: Any, cfg: Any, ckpt_dir: Path, marker: dict[str, Any],
                 geometry_encoder: Any = None) -> None:
        self.policy = policy
        self.pipeline = pipeline
        self.cfg = cfg
        self.checkpoint = str(ckpt_dir)
        self.step = int(marker["step"])
        self.compressor = str(cfg.model.compressor.type)
        self.image_size = int(cfg.data.image_size)
        self.num_views = int(cfg.model.geometry.views)
        self.action_horizon = int(cfg.model.action_head.horizon)
        self.action_dim = int(cfg.model.action_head.action_dim)
        # the raw state the pipeline takes (the dataset's, 8 for LIBERO), not the state encoder's input width:
        # the fork preset builds a 7-wide encoder it never feeds (use_state false), as the fork does
        self.state_dim = int(np.asarray(pipeline.state.center).shape[0])
        self.store = marker.get("store")  # encoder identity + preprocessing the run's tokens came from
        self.geometry_encoder = geometry_encoder
        self.device = next(policy.parameters()).device

    @property
    def needs_geometry(self) -> bool:
        return self.compressor != "none"

    def _images(self, images: Any) -> np.ndarray:
        from geo3d.data.transforms import UPRIGHT, to_model_images  # the one image path
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[0] != self.num_views or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise Geo3dError(f"images must be uint8 [{self.num_views},H,W,3] upright (agentview, wrist); got "
                             f"{arr.dtype} {arr.shape}")
        if arr.shape[1:3] != (self.image_size, self.image_size):
            arr = to_model_images(arr, self.image_size, UPRIGHT)
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

    def autocast(self) -> Any:
        """The precision context of a forward (training's mixed_precision rule); geo3d.evaluation's batched
        forward uses it too."""
        return inference_autocast(self.cfg.train.get("mixed_precision", "auto"), self.device)

    @torch.no_grad()
    def predict_action(self, images: Any, instruction: str, state: Any, geometry: Any = None) -> np.ndarray:
        """images uint8 [V,H,W,3] upright; raw state [8]; geometry [V,T,D] (optional, see module doc) ->
        unnormalized float32 actions [horizon, 7] (gripper in the dataset convention)."""
        imgs = self._images(images)
        batch = self.pipeline.preprocess(imgs[None], [instruction], np.asarray(state, dtype=np.float32)[None])
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["geometry"] = self._geometry(imgs, geometry)
        with self.autocast():
            actions = self.policy.predict_action(batch)[0]
        return self.pipeline.postprocess(actions)


def load_policy(ckpt_dir: str | Path, device: str = "cpu", geometry_encoder: Any = None) -> LoadedPolicy:
    """Everything from the checkpoint directory alone: config.yaml, the VLM architecture (vlm/config.json),
    the weights (model.safetensors or its shards) and the processor pipeline. No base model dir is read."""
    from geo3d.train.checkpoint import VLM_DIR
    from geo3d.policy.policy import build_policy
    from geo3d.policy.processor_pipeline import PolicyPipeline
    from geo3d.policy.weights_io import load_into
    ckpt = resolve_checkpoint(ckpt_dir)
    marker = read_marker(ckpt)
    cfg = OmegaConf.load(ckpt / "config.yaml")
    pipeline = PolicyPipeline.from_pretrained(ckpt)
    policy = build_policy(cfg.model, device=device, vlm_config_dir=ckpt / VLM_DIR)
    load_into(policy, ckpt, device)
    policy.processor = pipeline.tokenizer
    policy.eval()
    return LoadedPolicy(policy, pipeline, cfg, ckpt, marker, geometry_encoder)
