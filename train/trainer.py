"""The training loop: accelerate (CPU, one/many GPUs, many nodes), gradient accumulation, clipping,
per-module LR schedule, EMA, metrics, periodic + preemption checkpoints, exact resume.

Host syncs: one per optimizer step (the non-finite loss check, before the update is applied); gradient norms,
the attention mass and the loss are device tensors read only on logging steps (`train.log_interval`). In
multi-process runs the preemption check adds one reduce (an all-reduce of one element, read on the host) per
step: every rank must agree to stop at the same step, or the collective save would hang.

One `step` is one optimizer step over `grad_accum_steps` micro-batches. The data order, the noise the
flow-matching loss draws and every other random choice are restored from the checkpoint, so a run
resumed from step N produces the same losses as the uninterrupted run (exactly, on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from geo3d.core.errors import Geo3dError
from geo3d.policy.pretrained import Policy
from geo3d.train.checkpoint import TrainerState, prune_checkpoints, save_checkpoint
from geo3d.train.dataset import move_batch
from geo3d.train.metrics import MetricsLogger, StepTimer, module_grad_norms, read_grad_norms
from geo3d.core.preemption import PreemptionFlag


@dataclass
class TrainingParts:
    """Everything the loop needs; built by geo3d.train.launch.run_training."""

    cfg: DictConfig
    run_dir: Path
    accelerator: Any
    model: torch.nn.Module  # prepared (possibly wrapped)
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    state: TrainerState
    logger: MetricsLogger
    policy: Policy  # the unwrapped network + its processor + the run's config: what every checkpoint saves
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    step: int
    preempted_by: str | None
    last_checkpoint: Path | None
    is_main: bool = True  # only the main process reports


def _unwrap(parts: TrainingParts) -> torch.nn.Module:
    return parts.accelerator.unwrap_model(parts.model)


def _micro_step(parts: TrainingParts, batch: dict[str, Any], log: bool,
                losses: list[torch.Tensor]) -> tuple[Any, dict[str, Any]]:
    """Forward + backward of one micro-batch (its loss appended to `losses`); on the last one of a step also
    check the step's losses, clip and step the optimizer. `log`: this step writes a metrics record, so also
    measure the geometry attention mass and the per-module gradient norms (device tensors, read at logging)."""
    acc, train_cfg = parts.accelerator, parts.cfg.train
    extra: dict[str, Any] = {}
    with acc.accumulate(parts.model):
        out = parts.model(batch, attention_mass=log)
        losses.append(out.loss.detach())
        acc.backward(out.loss)
        if acc.sync_gradients:
            _check_finite(losses, parts.state.step + 1)
            if log:  # before clipping, as logged
                extra["grad_norm"] = module_grad_norms(_unwrap(parts).module_groups())
            params = [p for g in parts.optimizer.param_groups for p in g["params"]]
            total = acc.clip_grad_norm_(params, float(train_cfg.max_grad_norm))
            parts.optimizer.step()
            if log:
                extra["grad_norm_total"] = total
            parts.optimizer.zero_grad(set_to_none=True)
    return out.geom_attention_mass, extra


def _check_finite(losses: list[torch.Tensor], step: int) -> None:
    """Refuse a non-finite loss before its update is applied: the one host sync of an optimizer step (a check
    per micro-step would stall the GPU's queue between each forward and backward)."""
    stacked = torch.stack(losses)
    if not bool(torch.isfinite(stacked).all()):
        bad = next(float(x) for x in stacked.float().cpu() if not torch.isfinite(x))
        raise Geo3dError(f"non-finite loss {bad} at step {step}; lower the learning rate or check the data "
                         f"(norm stats, geometry tokens)")


def _optimizer_step(parts: TrainingParts, batches: Iterator[dict[str, Any]], timer: StepTimer,
                    log: bool) -> dict[str, Any]:
    """One full optimizer step; returns the record for metrics.jsonl (before cross-rank reduction)."""
    acc, train_cfg = parts.accelerator, parts.cfg.train
    losses: list[torch.Tensor] = []
    masses, extra = [], {}
    for _ in range(int(train_cfg.grad_accum_steps)):
        batch = next(batches)
        parts.state.consumed += len(batch["index"])
        timer.mark_data()
        mass, ex = _micro_step(parts, move_batch(batch, acc.device), log, losses)
        if mass is not None:
            masses.append(mass.detach().float())
        extra.update(ex)
        timer.mark_compute()
    lrs = {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(parts.optimizer.param_groups)}
    parts.scheduler.step()
    parts.state.step += 1
    if parts.state.ema is not None:
        parts.state.ema.update(_unwrap(parts))
    record: dict[str, Any] = {"loss": torch.stack(losses).float().mean()}
    if masses:
        record["geom_attention_mass"] = torch.stack(masses).mean(0)
    return {**record, **extra, "lr": lrs}


def _finalize_record(parts: TrainingParts, raw: dict[str, Any], timer: StepTimer) -> dict[str, Any]:
    """Reduce the loss / attention mass across processes and add LR per group, grad norms, timing, progress
    (the device values are read here, on logging steps only)."""
    acc = parts.accelerator
    loss = acc.reduce(raw["loss"].to(acc.device), reduction="mean")
    record: dict[str, Any] = {"step": parts.state.step, "loss": float(loss)}
    if "geom_attention_mass" in raw:
        mass = acc.reduce(raw["geom_attention_mass"].to(acc.device), reduction="mean")
        record["geom_attention_mass"] = [float(x) for x in mass.cpu()]
    record["lr"] = raw["lr"]  # the learning rates this step used
    record["grad_norm"], record["grad_norm_total"] = read_grad_norms(raw.get("grad_norm", {}),
                                                                     raw.get("grad_norm_total"))
    record.update(timer.pop())
    record["samples"] = parts.state.consumed * acc.num_processes
    record["epoch"] = parts.state.consumed / max(1, len(parts.sampler))
    return record


def _preemption_requested(parts: TrainingParts, flag: PreemptionFlag) -> bool:
    """All ranks must agree to stop at the same step (or the collective save would hang)."""
    acc = parts.accelerator
    if acc.num_processes == 1:
        return flag.requested
    t = torch.tensor([1.0 if flag.requested else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


def _save(parts: TrainingParts) -> Path:
    path = save_checkpoint(parts.accelerator, parts.model, parts.state, parts.run_dir, parts.policy,
                           parts.checkpoint_meta)
    if parts.accelerator.is_main_process:
        prune_checkpoints(parts.run_dir, parts.cfg.train.keep_last)
    return path


def train_loop(parts: TrainingParts, flag: PreemptionFlag, resumed_from: Path | None = None) -> TrainResult:
    """Run until train.max_steps or a preemption signal; checkpoints at save_interval, the end (unless
    train.save_final is false) and on signal.

    `flag` is installed by the caller before setup, so a signal during the (long, for 3B) setup is honoured
    after the first step instead of killing the process."""
    train_cfg, acc = parts.cfg.train, parts.accelerator
    max_steps, save_every = int(train_cfg.max_steps), int(train_cfg.save_interval)
    save_final = bool(train_cfg.save_final)
    log_every = max(1, int(train_cfg.log_interval))
    parts.model.train()
    batches = iter(parts.loader)
    timer = StepTimer()
    last: Path | None = resumed_from
    bar = tqdm(total=max_steps, initial=parts.state.step, desc="train", unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)
    try:
        while parts.state.step < max_steps:
            step = parts.state.step + 1
            log = step % log_every == 0 or step == max_steps
            raw = _optimizer_step(parts, batches, timer, log)
            if log:
                record = _finalize_record(parts, raw, timer)
                parts.logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update(1)
            stop = _preemption_requested(parts, flag)
            if step % save_every == 0 or (step == max_steps and save_final) or stop:
                last = _save(parts)
                timer.restart()  # else the save would show up as the next step's data wait
            if stop:
                return TrainResult(step, flag.signal_name or "peer rank", last)
    finally:
        bar.close()
        parts.logger.close()
    return TrainResult(parts.state.step, None, last)
