"""Optimizer side of training: per-module learning rates, the freeze list, AdamW and the cosine schedule.

The policy exposes its top-level modules by name (`policy.module_groups()`: vlm, compressor, action_head);
`train.lr.<name>` sets each group's peak learning rate (`train.lr.base` for a group not listed), and
`train.freeze` lists groups whose parameters get requires_grad=False and no optimizer state at all.
`train.optimizer.implementation` picks torch's AdamW kernel: `auto` = `fused` on CUDA (one kernel per step, no
scratch memory) and `foreach` elsewhere; torch's own default on CUDA is foreach, whose sqrt(exp_avg_sq) scratch
is a copy of the whole parameter group (14 GiB for the 3B VLM's 3.75B parameters, train/memory.py).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from geo3d.core.errors import Geo3dError

# Every module group a policy can have; a variant may lack one (the `none` compressor has no compressor),
# so config keys naming these are valid even when this model has no such module.
MODULE_GROUPS = ("vlm", "compressor", "action_head")
IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")  # train.optimizer.implementation


def apply_freeze(groups: Mapping[str, nn.Module], freeze: list[str]) -> None:
    """Set requires_grad=False on every parameter of each frozen group; unknown names are an error."""
    unknown = sorted(set(freeze) - set(groups) - set(MODULE_GROUPS))
    if unknown:
        raise Geo3dError(f"train.freeze names unknown module(s) {unknown}; the policy's modules are "
                         f"{sorted(groups)}")
    for name in (n for n in freeze if n in groups):
        for p in groups[name].parameters():
            p.requires_grad_(False)


def group_learning_rates(groups: Mapping[str, nn.Module], lr_cfg: Mapping[str, Any]) -> dict[str, float]:
    """Peak LR per module group: `train.lr.<group>`, else `train.lr.base`."""
    unknown = sorted(set(lr_cfg) - set(groups) - set(MODULE_GROUPS) - {"base"})
    if unknown:
        raise Geo3dError(f"train.lr has keys {unknown} that are not policy modules {sorted(groups)} (or 'base')")
    return {name: float(lr_cfg.get(name, lr_cfg["base"])) for name in groups}


def build_param_groups(groups: Mapping[str, nn.Module], lrs: Mapping[str, float],
                       weight_decay: float) -> list[dict[str, Any]]:
    """One AdamW group per trainable module (named, so metrics can log its LR); frozen modules are skipped."""
    out = []
    for name, module in groups.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            out.append({"name": name, "params": params, "lr": lrs[name], "initial_lr": lrs[name],
                        "weight_decay": weight_decay})
    if not out:
        raise Geo3dError("every module is frozen (train.freeze), so there is nothing to train")
    return out


def resolve_implementation(requested: str, device_type: str) -> str:
    """`train.optimizer.implementation` -> fused | foreach | for_loop for parameters on `device_type`."""
    if requested not in IMPLEMENTATIONS:
        raise Geo3dError(f"train.optimizer.implementation must be one of {', '.join(IMPLEMENTATIONS)}, "
                         f"got {requested!r}")
    if requested == "auto":
        return "fused" if device_type == "cuda" else "foreach"
    return requested


def build_optimizer(groups: Mapping[str, nn.Module], train_cfg: DictConfig) -> torch.optim.AdamW:
    """AdamW over the trainable module groups with the configured betas, eps, weight decay and kernel."""
    opt_cfg = train_cfg.optimizer
    lrs = group_learning_rates(groups, OmegaConf.to_container(train_cfg.lr))  # type: ignore[arg-type]
    param_groups = build_param_groups(groups, lrs, float(opt_cfg.weight_decay))
    device = param_groups[0]["params"][0].device.type
    impl = resolve_implementation(str(opt_cfg.implementation), device)
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(param_groups, betas=tuple(opt_cfg.betas), eps=float(opt_cfg.eps), **kernel)


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warmup 0->1 over `warmup` steps, then cosine 1->floor at `total` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: DictConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-group cosine-with-warmup, each group decaying from its own peak LR to `schedule.min_lr`."""
    warmup = int(train_cfg.schedule.warmup_steps)
    total = int(train_cfg.max_steps)
    min_lr = float(train_cfg.schedule.min_lr)
    lambdas = []
    for group in optimizer.param_groups:
        floor = min(1.0, min_lr / group["initial_lr"]) if group["initial_lr"] > 0 else 0.0
        lambdas.append(lambda s, f=floor: cosine_factor(s, warmup, total, f))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


class EMA:
    """Exponential moving average of the trainable weights (fp32 shadow copies), kept on the model's device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.shadow = {n: t.clone() for n, t in state["shadow"].items()}

    def weights_into(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of `state_dict` with the averaged weights substituted (for the inference checkpoint)."""
        out = dict(state_dict)
        for n, t in self.shadow.items():
            if n in out:
                out[n] = t.to(out[n].dtype)
        return out
