"""Checkpoints: the seed's inference files plus the full resume state, written atomically.

<run>/checkpoints/steps_<N>/
    steps_<N>_pytorch_model.pt   model state_dict (EMA weights when EMA is on; raw weights then in resume/)
    config.yaml                  the run's resolved config (model, data, train, store identity)
    norm_stats.json              the dataset statistics used to (un)normalize actions
    checkpoint.json              step, provenance, whether the weights are EMA; written last
    resume/                      accelerate.save_state: model, optimizer, scheduler, RNG (python, numpy,
                                 torch, cuda) per process, and the trainer state (step, sampler position, EMA)
Everything is written under checkpoints/.steps_<N>.partial and renamed into place, so a crash never
leaves a half checkpoint under a real name. The first four files alone are enough for inference with the tiny
VLM; a real Qwen2.5-VL run also needs the model dir that config.yaml names (model.vlm.source).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from geo3d.errors import Geo3dError

CKPT_DIR = "checkpoints"
MARKER = "checkpoint.json"
_STEP_DIR = re.compile(r"^steps_(\d+)$")


def weights_name(step: int) -> str:
    return f"steps_{step}_pytorch_model.pt"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"steps_{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (renamed into place and carrying their marker), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / MARKER).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


class TrainerState:
    """What the loop needs besides model/optimizer/scheduler/RNG: registered with accelerate's checkpointing."""

    def __init__(self) -> None:
        self.step = 0
        self.consumed = 0  # samples this rank has drawn from its sampler
        self.world_size = 1  # processes of the run that wrote the state
        self.ema: Any = None  # train.optim.EMA or None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "consumed": self.consumed, "world_size": self.world_size,
                "ema": self.ema.state_dict() if self.ema is not None else None}

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
            self.ema.load_state_dict(state["ema"])


def save_checkpoint(accelerator: Any, model: torch.nn.Module, state: TrainerState, run_dir: Path,
                    cfg: DictConfig, norm_stats_path: Path, meta: Mapping[str, Any]) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    final = checkpoint_dir(run_dir, state.step)
    partial = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)  # left by a run killed mid-save
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial / "resume"), safe_serialization=False)
    weights = accelerator.get_state_dict(model)  # gathers sharded weights where needed (collective)
    if accelerator.is_main_process:
        if state.ema is not None:
            weights = state.ema.weights_into(weights)
        torch.save(weights, partial / weights_name(state.step))
        (partial / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        shutil.copyfile(norm_stats_path, partial / "norm_stats.json")
        marker = {"step": state.step, "weights": weights_name(state.step), "ema_weights": state.ema is not None,
                  **meta}
        (partial / MARKER).write_text(json.dumps(marker, indent=2, default=str))
        if final.exists():  # only a dir without a marker can be here (a complete one would have been resumed
            # from, and the loop saves each step once): not a checkpoint, so replacing it loses nothing
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` checkpoints (None or 0 keeps all, the seed's behaviour)."""
    if not keep_last:
        return
    for _, d in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)


def read_marker(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / MARKER
    if not path.is_file():
        raise Geo3dError(f"{ckpt_dir} is not a complete geo3d checkpoint (no {MARKER}); pass a "
                         f"checkpoints/steps_<N> directory or a run directory that has one")
    from geo3d.data.orientation import refuse_old_checkpoint
    marker = json.loads(path.read_text())
    refuse_old_checkpoint(marker, ckpt_dir)
    return marker
