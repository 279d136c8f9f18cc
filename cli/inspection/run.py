"""Build the real input paths (the policy's processor, the geometry encoder), run one sample through
them and write what each model receives: PNGs read back from the input tensors + inspect.json."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from geo3d.cli.inspection.model_views import encoder_images, vlm_images
from geo3d.cli.inspection.sources import Sample
from geo3d.core.errors import Geo3dError
from geo3d.core.provenance import provenance
from geo3d.data.lerobot_layout import VIEW_NAMES as VIEWS  # the one view order
from geo3d.data.norm_stats import compute_norm_stats
from geo3d.data.orientation import orientation_probe
from geo3d.encoders import build_encoder, preflight_encoder
from geo3d.encoders.views import frames_to_model_input, norm_mean_std
from geo3d.evaluation.policy_handle import build_live_encoder
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.pretrained import read_marker, resolve_checkpoint
from geo3d.policy.processor_policy import PolicyProcessor
from geo3d.policy.vlm import vlm_source_dir

RESULT_FILE = "inspect.json"


@dataclass
class InputPaths:
    """What turns a sample into model inputs, built by the code training / eval use."""

    cfg: DictConfig
    processor: Any  # geo3d.policy.processor_policy.PolicyProcessor (tokenizer + state/action normalization)
    encoder: Any  # precompute GeometryEncoder
    checkpoint: str | None


def encoder_for(cfg: DictConfig, marker: dict[str, Any] | None, weights: str | None) -> Any:
    """A checkpoint's recorded encoder (as eval rebuilds it), else the configured precompute encoder."""
    image_size = int(cfg.data.image_size)
    if marker and marker.get("store"):
        return build_live_encoder(marker["store"], image_size, "cpu", weights)
    preflight_encoder(cfg.encoder, image_size)
    return build_encoder(cfg.encoder, image_size, "cpu")


def prepare_out(out: Path, overwrite: bool) -> None:
    if (out / RESULT_FILE).exists() and not overwrite:
        raise Geo3dError(f"{out} already holds an inspection ({RESULT_FILE}); pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)


def prompt_text(processor: Any, input_ids: torch.Tensor) -> str:
    """The prompt decoded from the actual token ids, runs of image-pad tokens shown as `<|image_pad|>x64`."""
    text = processor.hf.tokenizer.decode(input_ids.tolist(), skip_special_tokens=False)
    token = processor.hf.image_token
    return re.sub(f"(?:{re.escape(token)})+", lambda m: f"{token}x{len(m.group(0)) // len(token)}", text)


def _png(path: Path, img: np.ndarray) -> str:
    Image.fromarray(img).save(path)
    return path.name


def _floats(x: Any) -> Any:
    return None if x is None else np.asarray(x, dtype=np.float64).round(6).tolist()


def inspect_sample(paths: InputPaths, sample: Sample, out: Path) -> dict[str, Any]:
    """Run `sample` through the real input paths and write vlm_<view>.png, geometry_<view>.png, inspect.json."""
    pipe = paths.processor
    vlm = pipe.preprocess(sample.images[None], [sample.instruction], sample.state[None])  # as TrainCollator calls it
    enc = paths.encoder
    geo_frames = frames_to_model_input(sample.geometry_frames, enc.image_size, sample.geometry_orientation)
    geo_views = enc.model_inputs(torch.from_numpy(geo_frames[None]))
    files = {}
    image_processor = pipe.vlm_inputs.hf.image_processor
    for v, img in enumerate(vlm_images(vlm, image_processor)):
        files[f"vlm_{VIEWS[v]}"] = _png(out / f"vlm_{VIEWS[v]}.png", img)
    for v, img in enumerate(encoder_images(geo_views, norm_mean_std(enc.data_norm_type))):
        files[f"geometry_{VIEWS[v]}"] = _png(out / f"geometry_{VIEWS[v]}.png", img)
    ids = vlm["input_ids"][0][vlm["attention_mask"][0].bool()]
    normalized = None if sample.actions is None else pipe.normalize_actions(sample.actions)
    result = {
        **sample.where, "checkpoint": paths.checkpoint, "files": files,
        "instruction": sample.instruction,
        "prompt": prompt_text(pipe.vlm_inputs, ids), "prompt_token_ids": ids.tolist(),
        "state": _floats(sample.state), "state_normalized": _floats(vlm["state"][0]),
        "normalization": {"action": pipe.spec.action, "state": pipe.spec.state},
        "actions_raw": _floats(sample.actions), "actions_normalized": _floats(normalized),
        "action_pad": None if sample.action_pad is None else sample.action_pad.tolist(),
        "content_id": f"{int(sample.content_id):016x}",
        "orientation": {"source": sample.source_orientation, "image_path_probe": orientation_probe()},
        "vlm_input": {"image_grid_thw": vlm["image_grid_thw"].tolist(),
                      "pixel_values": list(vlm["pixel_values"].shape),
                      "image_mean": list(image_processor.image_mean), "image_std": list(image_processor.image_std)},
        "geometry_input": {"encoder": enc.identity(), "image_size": enc.image_size,
                           "normalize": enc.preprocessing()["normalize"]},
        "provenance": provenance(),
    }
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def build_paths(cfg: DictConfig, ckpt: str | None, mixture: Any, weights: str | None) -> InputPaths:
    """With a checkpoint: its own processor and recorded encoder. Without: the processor `geo3d train` builds
    (the model's processor files, norm stats computed over the config's data mixture) and the precompute
    encoder config."""
    marker = None
    if ckpt:
        ck = resolve_checkpoint(ckpt)
        marker, ckpt = read_marker(ck), str(ck)
        processor = PolicyProcessor.from_pretrained(ck)
    else:
        processor = PolicyProcessor.for_training(vlm_source_dir(PolicyConfig.from_cfg(cfg.model).vlm), cfg.model,
                                                 compute_norm_stats(mixture))
    return InputPaths(cfg, processor, encoder_for(cfg, marker, weights), ckpt)


def checkpoint_config(ckpt: str) -> DictConfig:
    return OmegaConf.load(resolve_checkpoint(ckpt) / "config.yaml")
