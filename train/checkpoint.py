"""Training checkpoints: the policy directory (policy/pretrained.py, self-contained for serve/eval) plus the
resume state beside it.

<run>/checkpoints/steps_<N>/
    ...                          the policy directory `Policy.save_pretrained` writes (weights = the EMA average
                                 when EMA is on), checkpoint.json last
    steps_<N>_pytorch_model.pt   only with train.checkpoint.starvla_pt=true (the seed's file, for StarVLA tools)
    resume/                      optimizer, scheduler, RNG per process, trainer state (step, sampler, EMA
                                 decay). No second copy of the weights: resuming reads model.safetensors; with EMA
                                 on, resume/raw_weights.safetensors holds the raw (non-averaged) trainable weights
                                 and the EMA shadow is model.safetensors (entries stored below fp32 keep an fp32
                                 copy in resume/ema_fp32.safetensors so resume stays exact).
Everything is written under checkpoints/.steps_<N>.partial, fsynced and renamed into place, so a crash (even
kill -9) never leaves a half checkpoint under a real name; the previous checkpoint stays usable.
Old checkpoints (steps_<N>_pytorch_model.pt without model.safetensors) are refused with a message (README).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from geo3d.core.errors import Geo3dError
from geo3d.features_store.fsutil import fsync_dir, fsync_tree
from geo3d.policy.pretrained import Policy
from geo3d.policy.run_dir import checkpoint_dir, list_checkpoints
from geo3d.policy.weights_io import load_weights, tied_aliases

RESUME_DIR = "resume"
RAW_WEIGHTS = "raw_weights.safetensors"
EMA_FP32 = "ema_fp32.safetensors"


def weights_name(step: int) -> str:
    return f"steps_{step}_pytorch_model.pt"


class TrainerState:
    """What the loop needs besides model/optimizer/scheduler/RNG: registered with accelerate's checkpointing.
    The EMA shadow itself is restored from the checkpoint's weights (`restore_weights`), not stored here."""

    def __init__(self) -> None:
        self.step = 0
        self.consumed = 0  # samples this rank has drawn from its sampler
        self.world_size = 1  # processes of the run that wrote the state
        self.ema: Any = None  # geo3d.train.optim.EMA or None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "consumed": self.consumed, "world_size": self.world_size,
                "ema": {"decay": self.ema.decay} if self.ema is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.consumed = int(state["consumed"])
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size:  # legitimate (elastic), but the data order then differs
            warnings.warn(f"resuming a run saved with {saved_world} processes on {self.world_size}: training "
                          f"continues, but the data order is no longer the uninterrupted run's")
        if state.get("ema") is not None:
            if self.ema is None:
                raise Geo3dError("the checkpoint has EMA weights but train.ema.enabled is false; resume with "
                                 "train.ema.enabled=true")
            self.ema.decay = float(state["ema"]["decay"])


def save_checkpoint(accelerator: Any, model: torch.nn.Module, state: TrainerState, run_dir: Path,
                    policy: Policy, meta: Mapping[str, Any]) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    final = checkpoint_dir(run_dir, state.step)
    partial = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)  # left by a run killed mid-save
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
    try:  # the weights are written once, below, not a second time inside resume/
        accelerator.save_state(str(partial / RESUME_DIR), safe_serialization=True)
    finally:
        handle.remove()
    weights = accelerator.get_state_dict(model)  # gathers sharded weights where needed (collective)
    if accelerator.is_main_process:
        raw = weights
        if state.ema is not None:
            weights = state.ema.weights_into(weights)
            _save_ema_resume(partial / RESUME_DIR, raw, weights, state.ema)
        ck = policy.config.train.checkpoint
        extra: dict[str, Any] = {"ema_weights": state.ema is not None, **meta}
        if ck.starvla_pt:
            torch.save(weights, partial / weights_name(state.step))
            extra["starvla_pt"] = weights_name(state.step)
        policy.save_pretrained(partial, state.step, weights, str(ck.max_shard_size), extra)
        fsync_tree(partial)
        if final.exists():  # only a dir without a marker can be here (a complete one would have been resumed
            # from, and the loop saves each step once): not a checkpoint, so replacing it loses nothing
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_dir(final.parent)
    accelerator.wait_for_everyone()
    return final


def _save_ema_resume(resume: Path, raw: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor], ema: Any) -> None:
    """With EMA the published weights are the averages: keep the raw trainable weights, and the fp32 shadow of
    any entry the published file stores at lower precision."""
    names = [n for n in ema.shadow if n in raw]
    save_file({n: raw[n].detach().cpu().contiguous() for n in names}, str(resume / RAW_WEIGHTS))
    low = {n: ema.shadow[n].detach().cpu().contiguous() for n in names if averaged[n].dtype != torch.float32}
    if low:
        save_file(low, str(resume / EMA_FP32))


def restore_weights(accelerator: Any, model: torch.nn.Module, state: TrainerState, ckpt: Path) -> None:
    """Resume: the model's (raw) weights and the EMA shadow from the checkpoint's files, then accelerate's
    state (optimizer, scheduler, RNG, trainer state) from resume/ with its model loading skipped."""
    unwrapped = accelerator.unwrap_model(model)
    weights = load_weights(ckpt)
    resume = ckpt / RESUME_DIR
    if state.ema is not None:
        if not (resume / RAW_WEIGHTS).is_file():
            raise Geo3dError(f"{ckpt} was saved without EMA but train.ema.enabled is true; resume with "
                             f"train.ema.enabled=false")
        fp32 = load_file(str(resume / EMA_FP32)) if (resume / EMA_FP32).is_file() else {}
        device = next(iter(state.ema.shadow.values())).device
        state.ema.shadow = {n: fp32.get(n, weights[n]).float().to(device) for n in state.ema.shadow}
        weights.update(load_file(str(resume / RAW_WEIGHTS)))
    missing, unexpected = unwrapped.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in tied_aliases(ckpt)]
    if missing or unexpected:
        raise Geo3dError(f"{ckpt} does not fit this run's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    handle = accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    try:
        accelerator.load_state(str(resume))
    finally:
        handle.remove()


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` checkpoints (None or 0 keeps all, the seed's behaviour)."""
    if not keep_last:
        return
    for _, d in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)
