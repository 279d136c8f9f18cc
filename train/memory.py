"""Per-GPU training memory on paper: what a DDP run holds at its peak, for 1, 4 and 8 GPUs.

`estimate_memory(cfg)` has no side effects (the model is built on the meta device: no memory, no weights read)
so `geo3d train --dry-run`, `geo3d doctor` and `make gpu-check` share it. It is an estimate; `make gpu-check`
prints it next to `torch.cuda.max_memory_allocated` on a real GPU. What the code does, term by term:
  weights      every trainable parameter fp32 (policy/precision.py's master weights), frozen ones as stored
  grads        fp32, one per trainable parameter; with >1 GPU torch DDP's buckets hold a second copy
  adam         AdamW's exp_avg + exp_avg_sq, fp32 (8 B per trainable parameter)
  ema          the fp32 shadow copy of the trainable weights (train.ema.enabled)
  autocast     bf16 copies of the fp32 trainable matmul weights (Linear, conv, attention projections) that
               autocast makes in the forward: autograd saves them for the backward, so they live until then
  activations  what autograd saves for the backward at the configured micro-batch (below)
  optim temp   the optimizer step's scratch: foreach AdamW allocates sqrt(exp_avg_sq) for a whole parameter
               group (4 B x the largest group), the fused kernel nothing, the per-tensor loop one tensor's worth
  context      the CUDA context + cuBLAS workspace, an assumed constant (`make gpu-check` reads the real one)
Peak = max(forward/backward, optimizer step) + context, where forward/backward = weights + adam + ema + autocast +
activations + the gradients alive in the forward (all of them from the second micro-step of an accumulating step
on; with grad_accum_steps 1 none, as zero_grad frees them, only DDP's buckets with >1 GPU) and optimizer step =
weights + grads + adam + ema + optim temp. Measured on an H200 at grad_accum_steps 1 (docs/gpu.md, `make
gpu-check`, the 3B fork preset, fused AdamW): 72.9 / 99.0 GiB peak allocated at batch 4 / 16 against 70.8 / 99.3
estimated; with gradient checkpointing the optimizer step is the peak, 70.9-71.0 against 70.8.
Activations (bytes saved for backward per layer, bf16 autocast, trainable fp32 weights so the residual stream is
fp32): derived from what each op saves and checked against torch's saved-tensor hooks counted on CPU at the 3B
widths (tests/test_train_memory.py): text decoder layer s*(8I + 30h + 4kv + 4 heads), vision block
p*(8I_v + 32h_v), DiT block 52*n*L*d + its keys/values + the 4*b*S*d context casts (n = B*R rows, L head tokens,
S context tokens), plus the per-sample tensors outside the layers (pixel casts, merger, final norms, compressor
keys/values). Flash/SDPA attention: no s^2 term. A frozen VLM saves nothing but the context casts; gradient
checkpointing keeps each layer's input plus one layer recomputed in the backward.
Not counted: allocator fragmentation (reserved minus allocated), NCCL buffers, kernel workspaces.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from geo3d.policy.modeling_policy import build_policy
from geo3d.train.optim import apply_freeze, resolve_implementation

GB = 1024**3
GPU_COUNTS = (1, 4, 8)
PROMPT_TEXT_TOKENS = 48  # chat template + system turn + a LIBERO instruction (real Qwen tokenizer; measured ~40-50)
CHARS_PER_TOKEN = 4      # the prompt template's own words, beyond the instruction (the fork's CoT prompt: ~37 tokens)
PATCH, MERGE = 14, 2     # Qwen2.5-VL vision patch size and the 2x2 token merge
PATCH_INPUT = 3 * 2 * PATCH * PATCH  # one flattened patch: RGB x temporal patch 2 x 14 x 14
CUDA_CONTEXT_GIB = 0.75  # assumption: torch's CUDA context (lazy module loading) + cuBLAS workspace on Hopper
MATMUL_MODULES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "PatchProjection", "MultiheadAttention")


@dataclass(frozen=True)
class MemoryRow:
    strategy: str
    gpus: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float  # the two Adam moments
    ema_gb: float
    autocast_gb: float
    activations_gb: float
    optimizer_temp_gb: float
    context_gb: float
    grads_in_forward_gb: float  # gradients alive while activations peak (see the module docstring)

    @property
    def state_gb(self) -> float:
        """What lives through the whole step: weights, gradients, Adam moments, EMA."""
        return self.weights_gb + self.grads_gb + self.optimizer_gb + self.ema_gb

    @property
    def allocated_gb(self) -> float:
        """The peak torch allocates (what torch.cuda.max_memory_allocated measures): no CUDA context."""
        always = self.weights_gb + self.optimizer_gb + self.ema_gb
        return always + max(self.grads_in_forward_gb + self.autocast_gb + self.activations_gb,
                            self.grads_gb + self.optimizer_temp_gb)

    @property
    def total_gb(self) -> float:
        return self.allocated_gb + self.context_gb


@dataclass
class MemoryTable:
    rows: list[MemoryRow]
    assumptions: dict[str, Any] = field(default_factory=dict)

    def row(self, gpus: int = 1) -> MemoryRow:
        return next(r for r in self.rows if r.gpus == gpus)

    def as_dict(self) -> dict[str, Any]:
        return {"assumptions": self.assumptions,
                "rows": [{**asdict(r), "allocated_gb": round(r.allocated_gb, 2), "total_gb": round(r.total_gb, 2)}
                         for r in self.rows]}

    def render(self) -> str:
        head = (f"{'strategy':<8} {'GPUs':>4} {'weights':>8} {'grads':>6} {'adam':>6} {'ema':>5} {'bf16cp':>6} "
                f"{'activ':>6} {'optmp':>6} {'ctx':>4} {'peak':>6}  (GiB per GPU)")
        lines = [head] + [f"{r.strategy:<8} {r.gpus:>4} {r.weights_gb:>8.1f} {r.grads_gb:>6.1f} {r.optimizer_gb:>6.1f} "
                          f"{r.ema_gb:>5.1f} {r.autocast_gb:>6.1f} {r.activations_gb:>6.1f} "
                          f"{r.optimizer_temp_gb:>6.1f} {r.context_gb:>4.1f} {r.total_gb:>6.1f}" for r in self.rows]
        a = self.assumptions
        lines.append(f"estimate at micro-batch {a['micro_batch']} x repeats {a['repeats']}, VLM sequence "
                     f"{a['vlm_seq']} tokens ({a['visual_tokens']} visual), {a['vision_patches']} vision patches, "
                     f"AdamW {a['optimizer_implementation']}; peak = max(fwd/bwd, optimizer step) + CUDA context; "
                     "excludes fragmentation and NCCL buffers (train/memory.py)")
        return "\n".join(lines)


def _param_groups(cfg: DictConfig) -> tuple[dict[str, dict[str, int]], Any]:
    """Per module group: params, trainable, bytes as stored, trainable matmul weights (autocast copies); and
    the VLM config — from a meta-device build with the freeze list applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "base dir not found: using the published architecture"
        policy = build_policy(cfg.model, device="cpu", meta=True)
    apply_freeze(policy.module_groups(), list(cfg.train.freeze))
    out = {}
    for name, module in policy.module_groups().items():
        params = list(module.parameters())
        stored = sum(p.numel() * (4 if p.requires_grad else p.element_size()) for p in params)
        out[name] = {"total": sum(p.numel() for p in params),
                     "trainable": sum(p.numel() for p in params if p.requires_grad),
                     "stored_bytes": stored, "autocast_params": autocast_params(module)}
    return out, policy.vlm.model.config


def autocast_params(module: nn.Module) -> int:
    """Trainable parameters that autocast copies to bf16: those of matmul modules, except a weight shared with
    an embedding (the 3B's tied lm_head: the policy never runs the LM head, an embedding lookup casts nothing)."""
    tied = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    seen: set[int] = set()
    count = 0
    for m in module.modules():
        if type(m).__name__ not in MATMUL_MODULES:
            continue
        for p in m.parameters(recurse=False):
            if p.requires_grad and id(p) not in tied and id(p) not in seen:
                seen.add(id(p))
                count += p.numel()
    return count


def text_tokens(cfg: DictConfig) -> int:
    """Prompt tokens besides the images: the chat turn + instruction, plus the template's own words."""
    template = str(OmegaConf.select(cfg, "model.vlm.prompt_template", default="{instruction}"))
    extra = len(template.replace("{instruction}", "").strip())
    return PROMPT_TEXT_TOKENS + round(extra / CHARS_PER_TOKEN)


def _text_layer(s: int, t: Any) -> float:
    kv = t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    return s * (8.0 * t.intermediate_size + 30.0 * t.hidden_size + 4.0 * kv + 4.0 * t.num_attention_heads)


def _vision_layer(p: int, v: Any) -> float:
    return p * (8.0 * v.intermediate_size + 32.0 * v.hidden_size)


def _dit_block(b: int, n: int, tokens: int, ctx: int, d: int, joint: bool) -> float:
    keys = 4.0 * n * (ctx + tokens) * d if joint else 4.0 * b * ctx * d  # k, v bf16 as SDPA saves them
    return 52.0 * n * tokens * d + keys + 4.0 * b * ctx * d  # + the to_k/to_v input casts of the context


def activation_bytes(cfg: DictConfig, vlm_config: Any, vlm_trainable: bool,
                     seq_text: int | None = None) -> tuple[float, dict[str, Any]]:
    """Bytes autograd saves for one micro-batch (module docstring); `seq_text` overrides the prompt estimate."""
    m, b = cfg.model, int(cfg.train.per_device_batch_size)
    views, size = int(m.geometry.views), int(cfg.data.image_size)
    patches = views * (size // PATCH) ** 2
    visual = patches // MERGE**2
    seq = visual + (text_tokens(cfg) if seq_text is None else int(seq_text))
    t, v, h = vlm_config.text_config, vlm_config.vision_config, m.action_head
    layers, d, n = int(h.num_layers), int(h.hidden), int(h.repeats) * b
    geometry = m.compressor.type != "none"
    ctx = seq + (0 if not geometry else (1 if m.compressor.type == "mean" else int(m.compressor.num_tokens)))
    tokens = int(OmegaConf.select(h, "use_state", default=True)) + int(h.num_future_tokens) + int(h.horizon)
    joint = str(OmegaConf.select(h, "attention", default="cross+self")) == "cross+self"
    vlm_ckpt = bool(OmegaConf.select(m, "vlm.gradient_checkpointing", default=False))
    head_ckpt = bool(OmegaConf.select(h, "gradient_checkpointing", default=False))
    g = int(m.geometry.views) * int(m.geometry.tokens_per_view)
    outside = b * (2.0 * patches * PATCH_INPUT + 16.0 * patches * v.hidden_size + 16.0 * seq * t.hidden_size)
    if geometry:  # the compressor's keys/values over the G geometry tokens and its input cast
        outside += b * (8.0 * g * d + 2.0 * g * int(m.geometry.dim))
    text_layer, vision_layer = b * _text_layer(seq, t), b * _vision_layer(patches, v)
    if not vlm_trainable:
        vlm = 0.0
    elif vlm_ckpt:  # each layer's input (fp32 text residual, bf16 vision) + one layer recomputed in backward
        vlm = b * (t.num_hidden_layers * 4.0 * seq * t.hidden_size + v.depth * 2.0 * patches * v.hidden_size) \
            + max(text_layer, vision_layer)
    else:
        vlm = t.num_hidden_layers * text_layer + v.depth * vision_layer
    block = _dit_block(b, n, tokens, ctx, d, joint)
    if head_ckpt:  # block input x (fp32), the context k/v it is handed, the context casts; one block recomputed
        head = layers * (4.0 * n * tokens * d + 8.0 * b * ctx * d) + block
    else:
        head = layers * block
    info = {"micro_batch": b, "repeats": int(h.repeats), "vlm_seq": seq, "visual_tokens": visual,
            "vision_patches": patches, "head_context": ctx, "vlm_gradient_checkpointing": vlm_ckpt,
            "head_gradient_checkpointing": head_ckpt,
            "activations_gb_by_part": {"vlm": vlm / GB, "head": head / GB, "outside_layers": outside / GB}}
    return vlm + head + outside, info


def optimizer_temp_bytes(groups: dict[str, dict[str, int]], implementation: str) -> float:
    """Scratch of one AdamW step (module docstring); `implementation` as train/optim.py resolved it."""
    if implementation == "fused":
        return 0.0
    if implementation == "foreach":
        return 4.0 * max((g["trainable"] for g in groups.values()), default=0)
    return 0.0  # per-tensor loop: one tensor's sqrt at a time, below the activations it follows


def estimate_memory(cfg: DictConfig, gpu_counts: tuple[int, ...] = GPU_COUNTS,
                    seq_text: int | None = None) -> MemoryTable:
    """The per-GPU table for the run `cfg` describes (the composed `geo3d train` config), on a CUDA device."""
    groups, vlm_config = _param_groups(cfg)
    vlm_trainable = groups.get("vlm", {}).get("trainable", 0) > 0
    act, info = activation_bytes(cfg, vlm_config, vlm_trainable, seq_text)
    impl = resolve_implementation(str(cfg.train.optimizer.implementation), "cuda")
    trainable = sum(g["trainable"] for g in groups.values())
    weights = sum(g["stored_bytes"] for g in groups.values())
    ema = 4.0 * trainable if bool(cfg.train.ema.enabled) else 0.0
    autocast = 2.0 * sum(g["autocast_params"] for g in groups.values())
    temp = optimizer_temp_bytes(groups, impl)
    grad = 4.0 * trainable / GB
    accumulating = int(cfg.train.grad_accum_steps) > 1
    rows = [MemoryRow("ddp", n, weights / GB, (2 if n > 1 else 1) * grad, 8.0 * trainable / GB, ema / GB,
                      autocast / GB, act / GB, temp / GB, CUDA_CONTEXT_GIB,
                      grads_in_forward_gb=(2 if n > 1 else 1) * grad if accumulating else (grad if n > 1 else 0.0))
            for n in gpu_counts]
    info.update(params_total=sum(g["total"] for g in groups.values()), params_trainable=trainable,
                params_by_module=groups, optimizer_implementation=impl, cuda_context_gib_assumed=CUDA_CONTEXT_GIB)
    return MemoryTable(rows, info)
