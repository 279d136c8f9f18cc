"""Per-GPU training memory on paper: weights, gradients, optimizer state by precision, and activations at the
configured batch and sequence length, under DDP and DeepSpeed ZeRO-2 for 1, 4 and 8 GPUs.

`estimate_memory(cfg)` has no side effects (the model is built on the meta device: no memory, no weights read)
so `geo3d train --dry-run` and `geo3d doctor` share it. It is an estimate, not a measurement: no GPU here.
Precision model (what the code does):
  DDP     accelerate + torch AdamW: every trainable parameter fp32 (policy/precision.py's master weights),
          frozen ones in model.vlm.dtype (the head and compressor are fp32 anyway); fp32 gradients and both
          fp32 Adam moments per trainable parameter; compute under bf16 autocast; nothing sharded; with >1 GPU
          torch DDP's gradient buckets hold a second gradient copy.
  ZeRO-2  DeepSpeed bf16 (configs/accelerate/deepspeed_zero2.yaml): every parameter bf16, bf16 gradients and
          the fp32 master copy + fp32 Adam moments (12 B per trainable parameter) partitioned over the GPUs
          (gradients too: stage 2); the weights themselves are replicated.
Activations (stored for backward, per GPU, one micro-batch): Korthikanti et al. 2022's 34*s*b*h bytes per
transformer layer in 16-bit with fused attention (SDPA/flash: no s^2 term), for the vision tower (patch tokens)
and the language model (visual + text tokens); the DiT head in fp32 (x2) over R*B sequences, its attention
fused too (SDPA; the geometry-mass softmax of logging steps runs without gradients, nothing stored). A frozen
VLM stores only the N hidden states the head reads; gradient checkpointing (model.vlm.gradient_checkpointing,
model.action_head.gradient_checkpointing) keeps one input per layer / DiT block.
Not counted: CUDA context (~0.5-1 GB), allocator fragmentation, NCCL/DeepSpeed buckets, temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

GB = 1024**3
GPU_COUNTS = (1, 4, 8)
STRATEGIES = ("ddp", "zero2")
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PROMPT_TEXT_TOKENS = 48  # chat template + system turn + a LIBERO instruction (tokens; measured ~40-50)
PATCH, MERGE = 14, 2     # Qwen2.5-VL vision patch size and the 2x2 token merge


@dataclass(frozen=True)
class MemoryRow:
    strategy: str
    gpus: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.grads_gb + self.optimizer_gb + self.activations_gb


@dataclass
class MemoryTable:
    rows: list[MemoryRow]
    assumptions: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"assumptions": self.assumptions,
                "rows": [{**row.__dict__, "total_gb": round(row.total_gb, 2)} for row in self.rows]}

    def render(self) -> str:
        head = (f"{'strategy':<8} {'GPUs':>4} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'total':>7}"
                "  (GiB per GPU)")
        lines = [head] + [f"{r.strategy:<8} {r.gpus:>4} {r.weights_gb:>8.1f} {r.grads_gb:>7.1f} {r.optimizer_gb:>7.1f} "
                          f"{r.activations_gb:>7.1f} {r.total_gb:>7.1f}" for r in self.rows]
        a = self.assumptions
        lines.append(f"estimate at micro-batch {a['micro_batch']} x repeats {a['repeats']}, VLM sequence "
                     f"{a['vlm_seq']} tokens ({a['visual_tokens']} visual), {a['vision_patches']} vision patches; "
                     "excludes CUDA context, fragmentation, comm buckets (train/memory.py)")
        return "\n".join(lines)


def _param_groups(cfg: DictConfig) -> tuple[dict[str, tuple[int, int, int]], Any]:
    """(module -> (params, trainable, bytes per param as stored), the VLM config), from a meta-device build."""
    import warnings

    from geo3d.policy.modeling_policy import build_policy
    from geo3d.train.optim import apply_freeze
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "base dir not found: using the published architecture"
        policy = build_policy(cfg.model, device="cpu", meta=True)
    apply_freeze(policy.module_groups(), list(cfg.train.freeze))
    out = {}
    for name, module in policy.module_groups().items():  # trainable: fp32 master weights (policy/precision.py)
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        size = 4 if trainable or not params else params[0].element_size()
        out[name] = (sum(p.numel() for p in params), trainable, size)
    return out, policy.vlm.model.config


def _activation_bytes(cfg: DictConfig, vlm_config: Any, vlm_trainable: bool) -> tuple[float, dict[str, Any]]:
    m, b = cfg.model, int(cfg.train.per_device_batch_size)
    views, size = int(m.geometry.views), int(cfg.data.image_size)
    patches = views * (size // PATCH) ** 2
    visual = patches // MERGE**2
    seq = visual + PROMPT_TEXT_TOKENS
    text, vis = vlm_config.text_config, vlm_config.vision_config
    h = m.action_head
    n_layers, rb, d = int(h.num_layers), int(h.repeats) * b, int(h.hidden)
    ctx = seq + (0 if m.compressor.type == "none" else int(m.compressor.num_tokens))
    head_tokens = int(OmegaConf.select(h, "use_state", default=True)) + int(h.num_future_tokens) + int(h.horizon)
    checkpointing = bool(OmegaConf.select(cfg, "model.vlm.gradient_checkpointing", default=False))
    head_checkpointing = bool(OmegaConf.select(h, "gradient_checkpointing", default=False))
    if not vlm_trainable:
        vlm = n_layers * seq * b * text.hidden_size * 2.0  # only the hidden states the head reads
    elif checkpointing:
        vlm = 2.0 * b * (text.num_hidden_layers * seq * text.hidden_size + vis.depth * patches * vis.hidden_size)
    else:
        vlm = 34.0 * b * (text.num_hidden_layers * seq * text.hidden_size + vis.depth * patches * vis.hidden_size)
    per_head_layer = 34.0 * head_tokens * rb * d + 2 * 2 * ctx * rb * d  # fp32 = 2x the 16-bit count; K/V
    if head_checkpointing:  # one block input kept; the context K/V are computed outside the blocks
        per_head_layer = 2.0 * head_tokens * rb * d + 2 * 2 * ctx * b * d
    head = n_layers * per_head_layer * 2.0
    info = {"micro_batch": b, "repeats": int(h.repeats), "vlm_seq": seq, "visual_tokens": visual,
            "vision_patches": patches, "head_context": ctx, "vlm_gradient_checkpointing": checkpointing,
            "head_gradient_checkpointing": head_checkpointing}
    return vlm + head, info


def estimate_memory(cfg: DictConfig, gpu_counts: tuple[int, ...] = GPU_COUNTS) -> MemoryTable:
    """The per-GPU table for the run `cfg` describes (the composed `geo3d train` config)."""
    groups, vlm_config = _param_groups(cfg)
    vlm_trainable = groups.get("vlm", (0, 0, 0))[1] > 0
    act, info = _activation_bytes(cfg, vlm_config, vlm_trainable)
    total = sum(p for p, _, _ in groups.values())
    trainable = sum(t for _, t, _ in groups.values())
    ddp_w = sum(p * s for p, _, s in groups.values())
    ddp_g = sum(t * s for _, t, s in groups.values())
    rows = []
    for n in gpu_counts:
        buckets = 2 if n > 1 else 1  # torch DDP's gradient buckets: a second gradient copy across processes
        rows.append(MemoryRow("ddp", n, ddp_w / GB, buckets * ddp_g / GB, 2 * ddp_g / GB, act / GB))
        rows.append(MemoryRow("zero2", n, 2 * total / GB, 2 * trainable / n / GB, 12 * trainable / n / GB, act / GB))
    info.update(params_total=total, params_trainable=trainable,
                params_by_module={k: {"total": p, "trainable": t, "bytes_per_param": s}
                                  for k, (p, t, s) in groups.items()})
    return MemoryTable(rows, info)
