"""GeoVLAPolicy: Qwen2.5-VL (semantic) + geometry compressor (3D, bypassing the LLM) + DiT flow-matching head.

One forward and one predict for every compressor variant: the variant only decides which geometry tokens (if
any) are appended to each DiT layer's context. Dtypes: the VLM runs in `model.vlm.dtype` (bf16 on GPU); its
hidden states, the compressor and the head run in fp32 (the head's parameter dtype).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geo3d.core.errors import Geo3dError
from geo3d.policy.action_head import FlowMatchingHead
from geo3d.policy.compressors import GeometryCompressor, build_compressor
from geo3d.policy.configuration_policy import PolicyConfig
from geo3d.policy.dit import ContextKV
from geo3d.policy.vlm import QwenVLBackbone


@dataclass
class PolicyOutput:
    loss: torch.Tensor  # scalar flow-matching loss (masked by action_pad)
    # [N] mean attention probability on geometry keys per DiT layer (detached); None unless asked for
    geom_attention_mass: torch.Tensor | None


class GeoVLAPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, vlm: QwenVLBackbone, compressor: GeometryCompressor | None,
                 action_head: FlowMatchingHead):
        super().__init__()
        self.cfg = cfg
        self.vlm = vlm
        self.compressor = compressor
        self.action_head = action_head

    # -- introspection used by the trainer -------------------------------------------------------------
    def module_groups(self) -> dict[str, nn.Module]:
        """Top-level modules for per-module LR, freeze lists and grad-norm logging (compressor absent for none)."""
        groups = {"vlm": self.vlm, "compressor": self.compressor, "action_head": self.action_head}
        return {k: v for k, v in groups.items() if v is not None}

    def param_counts(self) -> dict:
        counts: dict[str, dict[str, int]] = {}
        for name, module in self.module_groups().items():
            params = list(module.parameters())
            counts[name] = {"total": sum(p.numel() for p in params),
                            "trainable": sum(p.numel() for p in params if p.requires_grad)}
        counts["total"] = {k: sum(c[k] for c in counts.values()) for k in ("total", "trainable")}
        return counts

    # -- shared context path ----------------------------------------------------------------------------
    def _contexts(self, batch: dict) -> tuple[list[ContextKV], slice]:
        """Per-layer context K/V (VL hidden state i ‖ geometry tokens i) and where the geometry keys sit."""
        n = self.cfg.action_head.num_layers
        head_dtype = self.action_head.future_tokens.dtype
        hidden = [h.to(head_dtype) for h in self.vlm(batch, n)]
        mask = batch["attention_mask"].to(hidden[0].device).bool()
        seq = hidden[0].shape[1]
        if self.compressor is None:
            return self.action_head.dit.context_kv(hidden, mask), slice(seq, seq)
        geometry = batch.get("geometry")
        if geometry is None:
            raise Geo3dError(f"compressor {self.cfg.compressor.type!r} needs batch['geometry'] [B, V*T, D]; "
                             "train with a features store (or use model.compressor.type=none)")
        geo = self.cfg.geometry
        if tuple(geometry.shape[1:]) != (geo.num_tokens, geo.dim):
            raise Geo3dError(f"batch['geometry'] is {tuple(geometry.shape)}, model.geometry expects "
                             f"[B, {geo.views}*{geo.tokens_per_view}, {geo.dim}]; use a store made for this config")
        geom = [g.to(head_dtype) for g in self.compressor(geometry.to(hidden[0].device))]
        k = geom[0].shape[1]
        contexts = [torch.cat([h, g], dim=1) for h, g in zip(hidden, geom, strict=True)]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], k)], dim=1)
        return self.action_head.dit.context_kv(contexts, mask), slice(seq, seq + k)

    def _state(self, batch: dict) -> torch.Tensor | None:
        """The state token's input, or None when the head has none (`model.action_head.use_state: false`)."""
        h = self.cfg.action_head
        return self._head_inputs(batch, "state", h.state_dim) if h.use_state else None

    def _head_inputs(self, batch: dict, key: str, dim: int) -> torch.Tensor:
        x = batch[key].to(self.action_head.future_tokens.device, self.action_head.future_tokens.dtype)
        if x.shape[-1] != dim:
            raise Geo3dError(f"batch[{key!r}] last dim is {x.shape[-1]}, the model expects {dim}")
        return x

    # -- training and inference -------------------------------------------------------------------------
    def forward(self, batch: dict, attention_mass: bool = False) -> PolicyOutput:
        """Flow-matching loss; `attention_mass=True` also measures the geometry attention mass (extra work: the
        trainer asks on logging steps only)."""
        ctx, geom_slice = self._contexts(batch)
        actions = self._head_inputs(batch, "actions", self.cfg.action_head.action_dim)
        pad = batch.get("action_pad")
        pad = torch.zeros(actions.shape[:2], dtype=torch.bool) if pad is None else pad
        loss, mass = self.action_head.loss(ctx, self._state(batch), actions, pad.to(actions.device), geom_slice,
                                           attention_mass)
        return PolicyOutput(loss=loss, geom_attention_mass=mass.detach() if mass is not None else None)

    @torch.no_grad()
    def predict_action(self, batch: dict, num_steps: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized actions [B, horizon, action_dim]; dropout off for the call. `generator`: CPU noise RNG."""
        steps = num_steps or self.cfg.action_head.num_inference_steps
        with _eval_mode(self):
            ctx, geom_slice = self._contexts(batch)
            actions = self.action_head.sample(ctx, self._state(batch), geom_slice, steps, generator)
        return actions


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def build_policy(model_cfg: Any, device: str | torch.device = "cpu", meta: bool = False,
                 vlm_config_dir: Path | None = None) -> GeoVLAPolicy:
    """Build the network from the `model:` config. meta=True: shapes only (no memory, no weights read).
    vlm_config_dir: a checkpoint's saved VLM architecture (weights uninitialized, loaded by the caller).
    The processor is not part of the network: `PolicyProcessor` (policy/processor_policy.py)."""
    cfg = PolicyConfig.from_cfg(model_cfg)
    if vlm_config_dir is not None:
        vlm = QwenVLBackbone.from_saved_config(vlm_config_dir, cfg.vlm, meta=meta)
    else:
        vlm = QwenVLBackbone.build(cfg.vlm, meta=meta)
    vlm.check_depth(cfg.action_head.num_layers)
    if vlm.hidden_size != cfg.action_head.hidden:
        raise Geo3dError(f"model.action_head.hidden={cfg.action_head.hidden} must equal the VLM hidden size "
                         f"{vlm.hidden_size} (the DiT attends to VL hidden states with shared K/V projections)")
    with torch.device("meta") if meta else contextlib.nullcontext():
        compressor = build_compressor(cfg, vlm.hidden_size)
        head = FlowMatchingHead(cfg.action_head)
    policy = GeoVLAPolicy(cfg, vlm, compressor, head)
    return policy if meta else policy.to(device)
