"""The model's configuration class (lerobot's configuration_<policy>.py model): defaults and validation.

These dataclasses are the one source of model defaults (the seed's 3B sizes; TinyVLMConfig the tiny VLM's);
configs/model/*.yaml carry only what differs per model, configs/preset/*.yaml only what a design preset changes
(train/README.md). `geo3d train` records the full result (`full_model_section`) in the run's config, so a
checkpoint's config.yaml lists every value. Names and types are checked, so a typo fails at build time with a
message listing the valid keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from geo3d.core.errors import Geo3dError
from geo3d.data.norm_stats import NORM_METHODS

COMPRESSOR_TYPES = ("none", "mean", "pool", "per_layer", "qformer")
VLM_DTYPES = ("float32", "bfloat16", "float16")
PATCH_EMBED = ("matmul", "conv3d")
DIT_ATTENTION = ("cross", "cross+self")  # the fork: cross | geo3d: cross+self (train/README.md, "Design presets")
GEOMETRY_GROUPING = ("flat", "per_view")  # the fork: flat G//K groups | geo3d: groups never straddle a camera


@dataclass
class TinyVLMConfig:
    """Dims of the offline random-init Qwen2.5-VL used by the demo and tests."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    vocab_size: int = 400
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    seed: int = 0


@dataclass
class VLMConfig:
    source: str = "tiny"  # "tiny" or a local directory holding a Qwen2.5-VL checkpoint
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    gradient_checkpointing: bool = False  # recompute decoder layers in backward (GPU memory for compute)
    prompt_template: str = "{instruction}"  # the text after the images; the fork wraps it in its CoT_prompt
    # The vision patch embedding: its Conv3d has kernel == stride == the patch, so it is one matmul.
    # "matmul" (same weight, same state_dict key; 2.7-4.3x faster fwd+bwd on CPU) | "conv3d" (transformers' own)
    patch_embed: str = "matmul"
    tiny: TinyVLMConfig = field(default_factory=TinyVLMConfig)


@dataclass
class CompressorConfig:
    type: str = "pool"
    num_tokens: int = 16
    heads: int = 8
    grouping: str = "flat"  # pool/per_layer: "flat" = G//K groups (the fork); "per_view": K/V groups per camera


@dataclass
class GeometryConfig:
    views: int = 2
    tokens_per_view: int = 196
    dim: int = 1536

    @property
    def num_tokens(self) -> int:
        return self.views * self.tokens_per_view


@dataclass
class ActionHeadConfig:
    num_layers: int = 16
    hidden: int = 2048
    num_heads: int = 32
    head_dim: int = 64
    dropout: float = 0.2
    action_dim: int = 7
    state_dim: int = 8
    horizon: int = 8
    num_future_tokens: int = 32
    mlp_hidden: int = 1024  # width of the state encoder and the action decoder MLPs (GR00T: 1024)
    repeats: int = 4
    num_inference_steps: int = 4
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    noise_s: float = 0.999
    timestep_buckets: int = 1000
    attention: str = "cross+self"  # "cross": head tokens attend only to the context (the fork)
    use_state: bool = True  # prepend the state token (the fork's LIBERO configs emit no state)
    output_dim: int | None = None  # proj_out_2 width = action decoder input; None: = hidden (the fork: 2560)
    position_rows: int | None = None  # rows of the action position table; None: = horizon (the fork: 1024)
    gradient_checkpointing: bool = False  # recompute each DiT block in backward


@dataclass
class NormalizationConfig:
    """How the processor pipeline normalizes (policy/processor_policy.py); methods in NORM_METHODS."""

    action: str = "min_max"
    state: str = "mean_std"
    raw_action_dims: list[int] = field(default_factory=lambda: [6])  # kept raw (LIBERO gripper is -1/+1)


@dataclass
class PolicyConfig:
    vlm: VLMConfig = field(default_factory=VLMConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)

    @classmethod
    def from_cfg(cls, model_cfg: Any) -> "PolicyConfig":
        """Accept the whole run config (with a `model:` key), the `model` node itself, or a plain dict."""
        raw = _to_container(model_cfg)
        if "model" in raw and isinstance(raw["model"], Mapping):
            raw = raw["model"]
        cfg = _build(cls, raw, "model")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        c, h = self.compressor, self.action_head
        if c.type not in COMPRESSOR_TYPES:
            raise Geo3dError(f"unknown model.compressor.type {c.type!r}; valid: {', '.join(COMPRESSOR_TYPES)}")
        if self.vlm.dtype not in VLM_DTYPES:
            raise Geo3dError(f"model.vlm.dtype {self.vlm.dtype!r} is not one of {', '.join(VLM_DTYPES)}")
        if h.num_heads * h.head_dim != h.hidden:
            raise Geo3dError(f"model.action_head: num_heads*head_dim ({h.num_heads}*{h.head_dim}) must equal "
                             f"hidden ({h.hidden}); set num_heads = hidden / head_dim")
        if c.type in ("pool", "per_layer") and self.geometry.num_tokens < c.num_tokens:
            raise Geo3dError(f"model.compressor.num_tokens={c.num_tokens} exceeds the geometry tokens per sample "
                             f"(views*tokens_per_view={self.geometry.num_tokens}); lower num_tokens")
        if c.type == "qformer" and h.hidden % c.heads:
            raise Geo3dError(f"model.compressor.heads={c.heads} must divide the hidden size {h.hidden}")
        self._validate_normalization()
        for name in ("num_layers", "horizon", "repeats", "num_inference_steps", "timestep_buckets"):
            if getattr(h, name) < 1:
                raise Geo3dError(f"model.action_head.{name} must be >= 1, got {getattr(h, name)}")
        self._validate_design()

    def _validate_normalization(self) -> None:
        n, dim = self.normalization, self.action_head.action_dim
        for key in ("action", "state"):
            if getattr(n, key) not in NORM_METHODS:
                raise Geo3dError(f"model.normalization.{key}={getattr(n, key)!r}; valid: {', '.join(NORM_METHODS)}")
        if any(not 0 <= d < dim for d in n.raw_action_dims):
            raise Geo3dError(f"model.normalization.raw_action_dims {list(n.raw_action_dims)} must lie in [0, {dim})")

    def _validate_design(self) -> None:
        """The design switches (train/README.md "Design presets"): known values, consistent sizes."""
        c, h = self.compressor, self.action_head
        _one_of("model.action_head.attention", h.attention, DIT_ATTENTION)
        _one_of("model.compressor.grouping", c.grouping, GEOMETRY_GROUPING)
        _one_of("model.vlm.patch_embed", self.vlm.patch_embed, PATCH_EMBED)
        if "{instruction}" not in self.vlm.prompt_template:
            raise Geo3dError(f"model.vlm.prompt_template {self.vlm.prompt_template!r} must contain "
                             "'{instruction}' (where the task instruction goes)")
        if h.output_dim is not None and (isinstance(h.output_dim, bool) or not isinstance(h.output_dim, int)
                                         or h.output_dim < 1):
            raise Geo3dError(f"model.action_head.output_dim must be a positive int or null, got {h.output_dim!r}")
        rows = h.position_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < h.horizon):
            raise Geo3dError(f"model.action_head.position_rows must be null or an int >= horizon ({h.horizon}), "
                             f"got {rows!r}")
        if c.type in ("pool", "per_layer") and c.grouping == "per_view" and c.num_tokens % self.geometry.views:
            raise Geo3dError(f"model.compressor.grouping=per_view needs num_tokens ({c.num_tokens}) divisible by "
                             f"model.geometry.views ({self.geometry.views}); change num_tokens or use grouping=flat")
        if c.type in ("pool", "per_layer") and c.grouping == "per_view" \
                and self.geometry.tokens_per_view < c.num_tokens // self.geometry.views:
            raise Geo3dError(f"model.compressor.num_tokens={c.num_tokens} gives more groups per view than the "
                             f"{self.geometry.tokens_per_view} tokens per view; lower num_tokens")


def _one_of(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise Geo3dError(f"{key}={value!r} is not one of {', '.join(valid)}")


def full_model_section(model_cfg: Any) -> dict:
    """The `model:` section with every default filled in and validated (what a run records)."""
    return dataclasses.asdict(PolicyConfig.from_cfg(model_cfg))


def _to_container(cfg: Any) -> dict:
    try:
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    if not isinstance(cfg, Mapping):
        raise Geo3dError(f"model config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _build(dc: type, raw: Mapping, where: str) -> Any:
    """Build dataclass `dc` from `raw`, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(raw, Mapping):
        raise Geo3dError(f"{where} must be a mapping, got {raw!r}")
    known = {f.name: f for f in fields(dc)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise Geo3dError(f"unknown key(s) {unknown} in {where}; valid: {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None  # type: ignore[misc]
        if default is not None and hasattr(default, "__dataclass_fields__"):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(known[name].default, value, f"{where}.{name}")
    return dc(**kwargs)


def _check_type(default: Any, value: Any, where: str) -> Any:
    """Scalars must match their default's type (an int is accepted where a float is expected)."""
    want = type(default)
    if want in (int, float, str, bool):
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise Geo3dError(f"{where} must be {want.__name__}, got {value!r}")
    return value
