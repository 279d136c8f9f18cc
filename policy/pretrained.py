"""`Policy`: one trained policy as one object — its network, its processor and its config — saved and loaded as
one directory (lerobot's PreTrainedPolicy shape: `from_pretrained`, `save_pretrained`, `predict_action`).

A policy directory (a run's checkpoints/steps_<N>/, or anything `save_pretrained` wrote) holds everything:
    model.safetensors            the weights (sharded above max_shard_size: model-0000i-of-0000n + index)
    config.yaml                  the run's resolved config (model, data, train)
    vlm/config.json              the VLM architecture: rebuilt from here, never from the base model dir
    processor/ processor.json norm_stats.json   the processor (policy/processor_policy.py)
    checkpoint.json              step, format, weights layout, provenance; written last
Training writes it (train/checkpoint.py adds resume/ beside it); serve, eval and inspect read it. Nothing here
imports the trainer. Geometry tokens for a live frame come from the caller (`geometry=`) or from a
`geometry_encoder` with `.encode(images uint8 [B,V,S,S,3]) -> [B,V,T,D]` (geo3d.encoders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from geo3d.core.errors import Geo3dError
from geo3d.data.orientation import refuse_old_checkpoint
from geo3d.data.transforms import UPRIGHT, to_model_images
from geo3d.policy.modeling_policy import GeoVLAPolicy, build_policy
from geo3d.policy.precision import inference_autocast
from geo3d.policy.processor_policy import PolicyProcessor
from geo3d.policy.run_dir import MARKER, latest_checkpoint
from geo3d.policy.weights_io import load_into, save_weights, weight_files

FORMAT = "geo3d-safetensors-1"
VLM_DIR = "vlm"
CONFIG_FILE = "config.yaml"


def resolve_checkpoint(path: str | Path) -> Path:
    """A policy directory, or a run directory's latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise Geo3dError(f"checkpoint not found: {p}; pass a run directory (its latest checkpoint is used) or one "
                         f"of its checkpoints/steps_<N> directories")
    if (p / MARKER).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise Geo3dError(f"{p} has no complete checkpoint (expected checkpoints/steps_<N>/{MARKER}); train "
                         f"until a checkpoint is saved (train.save_interval) or pass another run directory")
    return latest


def read_marker(ckpt_dir: str | Path) -> dict[str, Any]:
    """checkpoint.json of a complete policy directory in the current format (an old one is refused, saying why)."""
    path = Path(ckpt_dir) / MARKER
    if not path.is_file():
        raise Geo3dError(f"{ckpt_dir} is not a complete geo3d checkpoint (no {MARKER}); pass a "
                         f"checkpoints/steps_<N> directory or a run directory that has one")
    marker = json.loads(path.read_text())
    if marker.get("format") != FORMAT:
        raise Geo3dError(f"{ckpt_dir} is an old-format geo3d checkpoint ({marker.get('weights')}, no "
                         f"model.safetensors / processor pipeline); this geo3d reads {FORMAT} only. Retrain, or "
                         f"check out the geo3d version that wrote it (see train/README.md 'Old checkpoints')")
    refuse_old_checkpoint(marker, ckpt_dir)
    return marker


class Policy:
    """A policy ready for control: upright images + instruction + raw state -> raw actions [horizon, 7]."""

    def __init__(self, model: GeoVLAPolicy, processor: PolicyProcessor, config: DictConfig,
                 marker: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None,
                 geometry_encoder: Any = None) -> None:
        self.model = model
        self.processor = processor
        self.config = config
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.step = int(marker["step"]) if marker else 0
        self.store = (marker or {}).get("store")  # encoder identity + preprocessing the run's tokens came from
        self.geometry_encoder = geometry_encoder
        self.compressor = str(config.model.compressor.type)
        self.preset = str(OmegaConf.select(config, "preset", default="") or "")
        self.image_size = int(config.data.image_size)
        self.num_views = int(config.model.geometry.views)
        self.action_horizon = int(config.model.action_head.horizon)
        self.action_dim = int(config.model.action_head.action_dim)
        self.uses_state = bool(config.model.action_head.use_state)
        # the raw state the processor takes (the dataset's, 8 for LIBERO), not the state encoder's input width:
        # the fork preset builds a 7-wide encoder it never feeds (use_state false), as the fork does
        self.state_dim = int(np.asarray(processor.state.center).shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def needs_geometry(self) -> bool:
        return self.compressor != "none"

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", geometry_encoder: Any = None) -> "Policy":
        """Everything from the directory alone (or a run directory's latest checkpoint): config.yaml, the VLM
        architecture (vlm/config.json), the weights and the processor. No base model directory is read."""
        ckpt = resolve_checkpoint(path)
        marker = read_marker(ckpt)
        cfg = OmegaConf.load(ckpt / CONFIG_FILE)
        processor = PolicyProcessor.from_pretrained(ckpt)
        model = build_policy(cfg.model, device=device, vlm_config_dir=ckpt / VLM_DIR)
        load_into(model, ckpt, device)
        model.eval()
        return cls(model, processor, cfg, marker, ckpt, geometry_encoder)

    def save_pretrained(self, directory: str | Path, step: int, weights: Mapping[str, torch.Tensor] | None = None,
                        max_shard_size: str = "5GB", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the policy directory; `weights` (default: the model's own state) may be an EMA average.
        checkpoint.json (step, format, weights layout, `extra`) is written last; returns its content."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = dict(weights) if weights is not None else self.model.state_dict()
        tied = save_weights(state, d, max_shard_size)
        (d / CONFIG_FILE).write_text(OmegaConf.to_yaml(self.config, resolve=True))
        self.model.vlm.save_config(d / VLM_DIR)
        self.processor.save_pretrained(d)
        marker = {"step": int(step), "format": FORMAT, "weights": [f.name for f in weight_files(d)],
                  "tied": tied, **(extra or {})}
        (d / MARKER).write_text(json.dumps(marker, indent=2, default=str))
        return marker

    # -- inference ------------------------------------------------------------------------------------------
    def _images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[0] != self.num_views or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise Geo3dError(f"images must be uint8 [{self.num_views},H,W,3] upright (agentview, wrist); got "
                             f"{arr.dtype} {arr.shape}")
        if arr.shape[1:3] != (self.image_size, self.image_size):
            arr = to_model_images(arr, self.image_size, UPRIGHT)  # the one image path
        return arr

    def _geometry(self, images: np.ndarray, geometry: Any) -> torch.Tensor | None:
        """[B, V*T, D] geometry tokens for a batch of image sets [B,V,S,S,3], or None for compressor none."""
        if not self.needs_geometry:
            return None
        if geometry is None:
            if self.geometry_encoder is None:
                raise Geo3dError(f"compressor {self.compressor!r} needs geometry tokens: pass geometry= "
                                 f"[V,T,D] or Policy.from_pretrained(..., geometry_encoder=<the encoder recorded in "
                                 f"checkpoint.json 'store.encoder'>)")
            geometry = self.geometry_encoder.encode(torch.from_numpy(images))
        g = torch.as_tensor(geometry)
        g = g.reshape(images.shape[0], -1, g.shape[-1])
        return g.to(self.device)

    @torch.no_grad()
    def predict_action_batch(self, images: Any, instructions: list[str], states: Any,
                             geometry: Any = None) -> np.ndarray:
        """B observations in one forward: images uint8 [B,V,H,W,3] upright, raw states [B,8], geometry [B,V,T,D]
        (optional) -> unnormalized float32 actions [B, horizon, 7] (gripper in the dataset convention)."""
        imgs = np.stack([self._images(im) for im in images])
        batch = self.processor.preprocess(imgs, instructions, np.asarray(states, dtype=np.float32))
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["geometry"] = self._geometry(imgs, geometry)
        with inference_autocast(self.config.train.get("mixed_precision", "auto"), self.device):
            actions = self.model.predict_action(batch)
        return self.processor.postprocess(actions)

    def predict_action(self, images: Any, instruction: str, state: Any, geometry: Any = None) -> np.ndarray:
        """One observation: images uint8 [V,H,W,3] upright, raw state [8], geometry [V,T,D] (optional) ->
        unnormalized float32 actions [horizon, 7]."""
        g = None if geometry is None else torch.as_tensor(geometry)[None]
        return self.predict_action_batch(np.asarray(images)[None], [instruction],
                                         np.asarray(state, dtype=np.float32)[None], g)[0]
