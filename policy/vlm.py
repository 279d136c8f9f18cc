"""The semantic path: Qwen2.5-VL (real 3B from a local dir, or the offline tiny model) -> last N hidden states.

Layer mapping (the same rule for every size): `output_hidden_states=True` yields L+1 states (the embeddings,
then each of the L decoder layers); DiT block i (0-based) cross-attends to state `L+1-N+i`, i.e. the last N.
3B: L=36, N=16 -> layers 21..36. Tiny (configs/model/tiny.yaml): L=4, N=4 -> layers 1..4.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.initialization import no_init_weights

from geo3d.core.errors import Geo3dError
from geo3d.policy.configuration_policy import VLMConfig
from geo3d.policy.tiny_qwen import build_tiny_model, tiny_model_dir

WEIGHT_GLOBS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Published config.json of Qwen/Qwen2.5-VL-3B-Instruct. Used ONLY for meta-device builds (param counts in
# `geo3d train --dry-run`) when the local checkpoint dir is not on this machine; real builds read the dir.
QWEN2_5_VL_3B_ARCH = dict(
    text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                     rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                         "rope_theta": 1_000_000.0}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                       fullatt_block_indexes=[7, 15, 23, 31], window_size=112, spatial_merge_size=2,
                       patch_size=14, temporal_patch_size=2, tokens_per_second=2),
    tie_word_embeddings=True,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_checkpoint_dir(path: Path) -> None:
    """A real Qwen2.5-VL dir needs config.json, tokenizer files and weights; say exactly what is missing."""
    if not path.is_dir():
        raise Geo3dError(f"Qwen2.5-VL checkpoint dir not found: {path}. Download Qwen/Qwen2.5-VL-3B-Instruct on a "
                         f"machine with internet (huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR), "
                         "then set model.vlm.source=DIR (or $GEO3D_QWEN_VL_DIR); model.vlm.source=tiny is the "
                         "offline demo model")
    missing = [f for f in ("config.json", *TOKENIZER_FILES) if not (path / f).is_file()]
    if not any(next(path.glob(g), None) for g in WEIGHT_GLOBS):
        missing.append("model weights (*.safetensors)")
    if missing:
        raise Geo3dError(f"Qwen2.5-VL checkpoint dir {path} is incomplete, missing: {', '.join(missing)}; "
                         "re-download the full model snapshot into it")


class PatchProjection(nn.Module):
    """Qwen2.5-VL's patch Conv3d (kernel == stride == its input [C, T, P, P], no bias) as one matmul.

    Same Parameter under the same name (`proj.weight`, shape [D, C, T, P, P]), so checkpoints load either way;
    the result equals the convolution up to fp32 rounding (~4e-6, tests/test_model_policy.py). Why: CPU conv3d
    (oneDNN) is 4.3x slower fwd+bwd than the matmul at the tiny model's size and 2.7x at the 3B's.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        plain = (conv.bias is None and tuple(conv.kernel_size) == tuple(conv.stride) and conv.groups == 1
                 and set(conv.padding) == {0} and set(conv.dilation) == {1})
        if not plain:
            raise Geo3dError(f"PatchProjection expects a bias-free, unpadded, ungrouped Conv3d whose kernel equals "
                             f"its stride, got {conv}; use model.vlm.patch_embed=conv3d")
        self.weight = conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, T, P, P] -> [N, D, 1, 1, 1], as the conv
        return F.linear(x.flatten(1), self.weight.flatten(1))[:, :, None, None, None]


def vlm_source_dir(cfg: VLMConfig) -> Path:
    """The directory a new run's VLM (and its processor files) comes from: the tiny model's generated directory
    (built offline once, cached) or the local Qwen2.5-VL directory named by model.vlm.source."""
    return tiny_model_dir(cfg.tiny) if cfg.source == "tiny" else Path(cfg.source).expanduser()


class QwenVLBackbone(nn.Module):
    """Wraps `Qwen2_5_VLForConditionalGeneration`; returns the hidden states the DiT layers read."""

    def __init__(self, model: nn.Module, model_dir: Path | None):
        super().__init__()
        self.model = model
        self.model_dir = model_dir  # where the processor is loaded from (None: meta build without the dir)
        text = model.config.text_config
        self.hidden_size: int = text.hidden_size
        self.num_hidden_states: int = text.num_hidden_layers + 1

    @classmethod
    def build(cls, cfg: VLMConfig, meta: bool = False) -> "QwenVLBackbone":
        backbone = cls._build(cfg, meta)
        backbone.set_patch_embed(cfg.patch_embed)
        if cfg.gradient_checkpointing:  # decoder (and vision) layers recompute their activations in backward
            model = backbone.model  # transformers >= 5.x: activation_checkpointing_enable; 4.x: gradient_...
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return backbone

    @classmethod
    def _build(cls, cfg: VLMConfig, meta: bool) -> "QwenVLBackbone":
        dtype = DTYPES[cfg.dtype]
        if cfg.source == "tiny":
            model_dir = vlm_source_dir(cfg)
            return cls(build_tiny_model(cfg.tiny, model_dir, dtype, cfg.attn_implementation, meta), model_dir)
        return cls._build_local(vlm_source_dir(cfg), dtype, cfg.attn_implementation, meta)

    @classmethod
    def _build_local(cls, path: Path, dtype: torch.dtype, attn: str, meta: bool) -> "QwenVLBackbone":
        if meta:
            if (path / "config.json").is_file():
                config = Qwen2_5_VLConfig.from_pretrained(path, local_files_only=True)
            else:
                warnings.warn(f"{path} not found: meta build uses the published Qwen2.5-VL-3B-Instruct architecture")
                config, path = Qwen2_5_VLConfig(**QWEN2_5_VL_3B_ARCH), None
            with torch.device("meta"):
                model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
            return cls(model, path)
        check_checkpoint_dir(path)
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation=attn)
        except (OSError, ValueError) as e:
            raise Geo3dError(f"cannot load Qwen2.5-VL from {path}: {e}") from e
        return cls(model, path)

    @classmethod
    def from_saved_config(cls, config_dir: Path, cfg: VLMConfig, meta: bool = False) -> "QwenVLBackbone":
        """The architecture a checkpoint saved (its vlm/config.json), weights left uninitialized: the caller
        loads the checkpoint's own weights next, so no base model directory is read."""
        config = Qwen2_5_VLConfig.from_pretrained(config_dir, local_files_only=True)
        with torch.device("meta") if meta else contextlib.nullcontext(), no_init_weights():
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, attn_implementation=cfg.attn_implementation, dtype=DTYPES[cfg.dtype])
        model.tie_weights()  # skipped with the initialization (3B: lm_head shares the input embeddings)
        backbone = cls(model, None)
        backbone.set_patch_embed(cfg.patch_embed)
        return backbone

    def set_patch_embed(self, kind: str) -> None:
        """`model.vlm.patch_embed`: "matmul" runs the vision patch embedding's Conv3d as the matmul it is."""
        patch_embed = self.model.model.visual.patch_embed
        if kind == "matmul" and isinstance(patch_embed.proj, nn.Conv3d):
            patch_embed.proj = PatchProjection(patch_embed.proj)

    def save_config(self, directory: Path) -> None:
        """config.json of the VLM (architecture only), so the checkpoint rebuilds it without the base dir."""
        self.model.config.save_pretrained(str(directory))

    def check_depth(self, num_layers: int) -> None:
        if num_layers > self.num_hidden_states:
            raise Geo3dError(f"model.action_head.num_layers={num_layers} exceeds the VLM's {self.num_hidden_states} "
                             "hidden states (embeddings + decoder layers); lower num_layers or use a deeper VLM")

    def forward(self, inputs: dict, num_layers: int) -> list[torch.Tensor]:
        """Run the language model (no LM head: only hidden states are used) and return the last `num_layers`."""
        kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                         "mm_token_type_ids") if inputs.get(k) is not None}
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(self.model.dtype)
        out = self.model.model(**kwargs, output_hidden_states=True, use_cache=False, return_dict=True)
        return list(out.hidden_states[-num_layers:])
