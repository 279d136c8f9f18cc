"""`make gpu-check`, part 1: the model directory, the bf16 matmul ceiling and the training step at full size.

The model is Qwen2.5-VL-3B from its published architecture (policy/vlm.py QWEN2_5_VL_3B_ARCH), random bf16
weights written once as a real model directory (config.json + safetensors + the tiny model's tokenizer and
processor, whose special-token ids the config takes), so `build_policy` and `geo3d train` load it through the
same `model.vlm.source=DIR` path as a downloaded checkpoint; $GEO3D_QWEN_VL_DIR (a real download) replaces it.
The step is the trainer's: bf16 autocast over fp32 master weights (policy/precision.py), AdamW with
train.optimizer.implementation (fused on CUDA), clipping, zero_grad; batches are the processor's real output
for random frames plus random geometry/state/actions (the loader is measured in the `feed` section).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.utils import is_flash_attn_2_available

from geo3d.core.config import CONFIG_DIR
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.precision import keep_trainable_fp32
from geo3d.policy.processor_policy import VLMInputs
from geo3d.policy.tiny_qwen import build_tiny_model, tiny_model_dir
from geo3d.policy.vlm import QWEN2_5_VL_3B_ARCH
from geo3d.train.memory import estimate_memory
from geo3d.train.optim import build_optimizer
from geo3d.train.run_config import compose_train_config

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"
TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def tiny_dir() -> Path:
    return tiny_model_dir(PolicyConfig.from_cfg(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")).vlm.tiny)


def make_model_dir(out: Path, full: bool, device: str) -> tuple[Path, str]:
    """A loadable Qwen2.5-VL directory with random weights: the 3B architecture (full) or the tiny one."""
    if full and os.environ.get("GEO3D_QWEN_VL_DIR"):
        return Path(os.environ["GEO3D_QWEN_VL_DIR"]), "GEO3D_QWEN_VL_DIR (real weights)"
    src = tiny_dir()
    shutil.copytree(src, out, dirs_exist_ok=True)
    tiny_config = json.loads((src / "config.json").read_text())
    if full:
        text = {**QWEN2_5_VL_3B_ARCH["text_config"], "eos_token_id": tiny_config["text_config"]["eos_token_id"],
                "pad_token_id": tiny_config["text_config"]["pad_token_id"], "bos_token_id": None}
        config = Qwen2_5_VLConfig(**{**QWEN2_5_VL_3B_ARCH, "text_config": text},
                                  **{k: tiny_config[k] for k in TOKEN_IDS})
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    else:
        tiny = PolicyConfig.from_cfg({"vlm": {"source": "tiny"}}).vlm.tiny
        model = build_tiny_model(tiny, src, torch.float32, "sdpa")
    model.save_pretrained(out)
    del model
    return out, "published Qwen2.5-VL-3B architecture, random init" if full else "tiny Qwen2.5-VL, random init"


def matmul_peak(device: str, full: bool) -> dict[str, Any]:
    """Dense bf16 matmul rate on random data (median of timed repeats): the MFU denominator."""
    n, reps = (8192, 30) if full else (512, 10)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"tflops": 2 * n**3 / sec / 1e12, "size": n, "repeats": reps, "dtype": "bfloat16"}


def step_config(model_dir: Path, full: bool, compressor: str, batch: int, ckpt: bool) -> Any:
    overrides = [f"model.vlm.source={model_dir}", "preset=fork", f"train.per_device_batch_size={batch}",
                 "train.grad_accum_steps=1",  # what train_step does: the estimate must describe the same step
                 f"model.vlm.gradient_checkpointing={ckpt}", f"model.action_head.gradient_checkpointing={ckpt}"]
    if not full:
        overrides += ["model_config=tiny", "model.geometry.tokens_per_view=16", "data.image_size=56"]
    return compose_train_config([], overrides, {"suite": "libero_all", "compressor": compressor})


def set_checkpointing(policy: Any, on: bool) -> None:
    """Toggle both gradient checkpointing switches on a built policy (as QwenVLBackbone.build sets them)."""
    model = policy.vlm.model
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    policy.action_head.dit.gradient_checkpointing = on


def make_batch(policy: Any, cfg: Any, batch: int, device: str) -> tuple[dict[str, Any], int]:
    """Processor output for random frames + random geometry/state/actions; also the prompt's text tokens."""
    size, g, h = int(cfg.data.image_size), cfg.model.geometry, policy.cfg.action_head
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch, int(g.views), size, size, 3), dtype=np.uint8)
    out = VLMInputs.from_dir(policy.vlm.model_dir)(images, [INSTRUCTION] * batch)
    visual = int(out["image_grid_thw"][:, 1:].prod(1).sum()) // 4 // batch
    text = int(out["input_ids"].shape[1]) - visual
    out.update(geometry=torch.randn(batch, int(g.views) * int(g.tokens_per_view), int(g.dim)).to(torch.bfloat16),
               state=torch.randn(batch, h.state_dim), actions=torch.rand(batch, h.horizon, h.action_dim) * 2 - 1,
               action_pad=torch.zeros(batch, h.horizon, dtype=torch.bool))
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in out.items()}, text


def train_step(policy: Any, optimizer: Any, batch: dict[str, Any], device: str, max_norm: float) -> None:
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss = policy(batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_flops(policy: Any, batch: dict[str, Any], device: str) -> int:
    """Forward + backward FLOPs of one step (torch.utils.flop_counter: matmuls, convolutions, attention)."""
    impl = policy.vlm.model.config._attn_implementation
    policy.vlm.model.set_attn_implementation("eager")  # the counter refuses GQA SDPA shapes; eager = same FLOPs
    try:
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                loss = policy(batch).loss
            loss.backward()
    finally:
        policy.vlm.model.set_attn_implementation(impl)
    policy.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def time_steps(policy: Any, optimizer: Any, batch: dict[str, Any], device: str, warmup: int, steps: int,
               max_norm: float) -> list[float]:
    for _ in range(warmup):
        train_step(policy, optimizer, batch, device, max_norm)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        train_step(policy, optimizer, batch, device, max_norm)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure_compressor(model_dir: Path, full: bool, compressor: str, device: str, peak_tflops: float,
                       batches: tuple[int, ...], warmup: int, steps: int,
                       vision_batch: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (batch, checkpointing) row for one compressor, on one policy built once (loading 3B weights
    takes a while); with `vision_batch`, then the vision tower on the same policy."""
    cfg0 = step_config(model_dir, full, compressor, batches[0], False)
    torch.manual_seed(0)
    policy = build_policy(cfg0.model, device=device).train()
    keep_trainable_fp32(policy, "bf16")
    optimizer = build_optimizer(policy.module_groups(), cfg0.train)
    rows = []
    for batch_size in batches:
        batch, text = make_batch(policy, cfg0, batch_size, device)
        set_checkpointing(policy, False)
        flops = count_flops(policy, batch, device)
        for ckpt in (False, True):
            set_checkpointing(policy, ckpt)
            cfg = step_config(model_dir, full, compressor, batch_size, ckpt)
            times = time_steps(policy, optimizer, batch, device, warmup, steps, float(cfg.train.max_grad_norm))
            sec = statistics.median(times)
            est = estimate_memory(cfg, gpu_counts=(1,), seq_text=text).row(1)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
            rows.append({"compressor": compressor, "batch": batch_size, "grad_checkpointing": ckpt,
                         "ms_per_step": 1e3 * sec, "samples_per_s": batch_size / sec,
                         "tflop_per_step": flops / 1e12, "mfu": flops / sec / (peak_tflops * 1e12),
                         "peak_allocated_gib": peak, "estimate_allocated_gib": est.allocated_gb,
                         "estimate_total_gib": est.total_gb, "text_tokens": text, "steps_timed": steps,
                         "warmup": warmup, "optimizer": str(type(optimizer).__name__) + " " +
                         ("fused" if optimizer.defaults.get("fused") else "foreach")})
        del batch
    optimizer.zero_grad(set_to_none=True)
    vision = vision_tower(policy, cfg0, device, vision_batch) if vision_batch else []
    del policy, optimizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows, vision


def vision_tower(policy: Any, cfg: Any, device: str, batch_size: int) -> list[dict[str, Any]]:
    """Forward time of the vision tower alone, per attention implementation transformers can use here
    (its window attention makes one SDPA call per window): is it launch-bound?"""
    batch, _ = make_batch(policy, cfg, batch_size, device)
    visual = policy.vlm.model.model.visual
    impls = ["sdpa"] + (["flash_attention_2"] if is_flash_attn_2_available() and device.startswith("cuda") else [])
    out = []
    for impl in impls:
        policy.vlm.model.set_attn_implementation(impl)
        pixels = batch["pixel_values"].to(next(visual.parameters()).dtype)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
        times = []
        with torch.no_grad(), ctx:
            for i in range(8):
                sync(device)
                t0 = time.perf_counter()
                visual(pixels, grid_thw=batch["image_grid_thw"])
                sync(device)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
        out.append({"attn_implementation": impl, "batch": batch_size, "ms_forward": 1e3 * statistics.median(times)})
    policy.vlm.model.set_attn_implementation(str(cfg.model.vlm.attn_implementation))
    return out
