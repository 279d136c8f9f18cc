"""The optimizer step of train/trainer.py with a real Accelerator (CPU) and a toy policy: a non-finite loss in any
micro-step is refused before the update (one host check per optimizer step), gradient norms stay device tensors
until a logging step reads them in one copy, and the AdamW kernel follows train.optimizer.implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from omegaconf import OmegaConf
from torch import nn

from geo3d.core.errors import Geo3dError
from geo3d.policy.modeling_policy import PolicyOutput
from geo3d.train.checkpoint import TrainerState
from geo3d.train.metrics import StepTimer, module_grad_norms, read_grad_norms
from geo3d.train.optim import build_optimizer, resolve_implementation
from geo3d.train.trainer import TrainingParts, _finalize_record, _optimizer_step

TRAIN = {"lr": {"base": 0.1}, "optimizer": {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0,
                                            "implementation": "auto"}}


class ToyPolicy(nn.Module):
    """Two module groups; loss = sum(w * x) (+ b), so a NaN in x makes a NaN loss."""

    def __init__(self) -> None:
        super().__init__()
        self.vlm = nn.Linear(3, 1)
        self.action_head = nn.Linear(3, 1)

    def module_groups(self) -> dict[str, nn.Module]:
        return {"vlm": self.vlm, "action_head": self.action_head}

    def forward(self, batch: dict, attention_mass: bool = False) -> PolicyOutput:
        x = batch["x"]
        return PolicyOutput(loss=(self.vlm(x) + self.action_head(x)).square().mean(), geom_attention_mass=None)


def _parts(accum: int) -> TrainingParts:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.manual_seed(0)
    acc = Accelerator(gradient_accumulation_steps=accum, cpu=True)
    policy = ToyPolicy()
    cfg = OmegaConf.create({"train": {**TRAIN, "grad_accum_steps": accum, "max_grad_norm": 1.0}})
    optimizer = build_optimizer(policy.module_groups(), cfg.train)
    model, optimizer = acc.prepare(policy, optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return TrainingParts(cfg=cfg, run_dir=Path("."), accelerator=acc, model=model, optimizer=optimizer,
                         scheduler=sched, loader=None, sampler=[0] * 8, state=TrainerState(), logger=None,
                         policy=None)


def _batches(*values: float):
    for v in values:
        yield {"x": torch.full((2, 3), v), "index": torch.arange(2)}


def test_a_non_finite_micro_step_is_refused_before_any_update():
    parts = _parts(accum=2)
    before = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    with pytest.raises(Geo3dError, match=r"non-finite loss nan at step 1; lower the learning rate"):
        _optimizer_step(parts, _batches(1.0, float("nan")), StepTimer(), log=False)
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the optimizer never stepped
    assert parts.state.step == 0


def test_grad_norms_are_device_tensors_read_once_on_logging_steps():
    parts = _parts(accum=2)
    raw = _optimizer_step(parts, _batches(1.0, 2.0), StepTimer(), log=False)
    assert "grad_norm" not in raw and "grad_norm_total" not in raw  # nothing measured off logging steps
    raw = _optimizer_step(parts, _batches(1.0, 2.0), StepTimer(), log=True)
    assert all(isinstance(v, torch.Tensor) for v in raw["grad_norm"].values())
    assert isinstance(raw["grad_norm_total"], torch.Tensor)
    record = _finalize_record(parts, raw, StepTimer())
    per_module, total = record["grad_norm"], record["grad_norm_total"]
    assert set(per_module) == {"vlm", "action_head"} and all(isinstance(v, float) for v in per_module.values())
    assert total == pytest.approx((per_module["vlm"] ** 2 + per_module["action_head"] ** 2) ** 0.5, rel=1e-5)
    assert record["step"] == 2 and isinstance(record["loss"], float)


def test_module_grad_norms_match_the_plain_l2_norm_and_frozen_groups_are_none():
    a, b = nn.Linear(4, 3), nn.Linear(4, 1)
    b.requires_grad_(False)
    (a(torch.randn(5, 4)).square().sum()).backward()
    norms = module_grad_norms({"a": a, "b": b})
    plain = torch.cat([p.grad.flatten() for p in a.parameters()]).norm()
    assert norms["b"] is None and float(norms["a"]) == pytest.approx(float(plain), rel=1e-6)
    floats, total = read_grad_norms(norms, None)
    assert floats == {"a": pytest.approx(float(plain), rel=1e-6), "b": None} and total is None


def test_optimizer_implementation_follows_the_config():
    assert resolve_implementation("auto", "cuda") == "fused" and resolve_implementation("auto", "cpu") == "foreach"
    groups = ToyPolicy().module_groups()
    for impl, key in (("foreach", "foreach"), ("for_loop", "foreach"), ("fused", "fused")):
        cfg = OmegaConf.create({**TRAIN, "optimizer": {**TRAIN["optimizer"], "implementation": impl}})
        opt = build_optimizer(groups, cfg)
        assert bool(opt.defaults[key]) == (impl != "for_loop")
    with pytest.raises(Geo3dError, match="train.optimizer.implementation must be one of auto, fused"):
        resolve_implementation("apex", "cpu")
