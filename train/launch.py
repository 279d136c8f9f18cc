"""`geo3d train` end to end: validate inputs, build the parts, restore a checkpoint, run the loop.

Also the dry run: build the model on the meta device (no memory, no weights read) and report sizes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PreemptionFlag, ignore_stop_signals
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.precision import accelerate_precision, keep_trainable_fp32
from geo3d.policy.pretrained import Policy
from geo3d.policy.processor_policy import PolicyProcessor
from geo3d.train import preflight
from geo3d.train.checkpoint import TrainerState, restore_weights
from geo3d.train.dataset import GeoTrainDataset, TrainCollator
from geo3d.train.memory import estimate_memory
from geo3d.train.metrics import MetricsLogger
from geo3d.train.optim import EMA, apply_freeze, build_optimizer, build_scheduler
from geo3d.train.run_config import run_dir_of
from geo3d.train.run_guard import claim_run_dir
from geo3d.train.sampler import ResumableSampler
from geo3d.train.trainer import TrainingParts, TrainResult, train_loop

DEEPSPEED_REFUSED = (
    "DeepSpeed is not supported yet: geo3d's DeepSpeed path has never run on a GPU, and a reading of it finds no "
    "autocast under DeepSpeed (a bf16 loss), no per-module grad norms and a second full weights copy in every "
    "checkpoint. Launch with DDP instead (configs/accelerate/single_gpu.yaml, multi_gpu.yaml, multi_node.yaml); "
    "to fit one GPU: train.freeze=[vlm] (configs/train/frozen_vlm.yaml), model.vlm.gradient_checkpointing=true, "
    "a smaller train.per_device_batch_size, or a larger GPU (`geo3d train --dry-run` prints the memory estimate)")


def refuse_deepspeed() -> None:
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED=true: refuse before any setup."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        raise Geo3dError(DEEPSPEED_REFUSED)


def make_accelerator(cfg: DictConfig) -> Any:
    refuse_deepspeed()
    precision = accelerate_precision(cfg.train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    # cpu=True without CUDA: lets torchrun/accelerate-launched CPU processes form a gloo group (MULTI_CPU)
    acc = Accelerator(gradient_accumulation_steps=int(cfg.train.grad_accum_steps), mixed_precision=precision,
                      step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
    if getattr(acc.state, "deepspeed_plugin", None) is not None:  # set some other way than the env
        raise Geo3dError(DEEPSPEED_REFUSED)
    return acc


def dry_run(cfg: DictConfig) -> dict[str, Any]:
    """Parameter counts per top-level module (total and trainable, after the freeze list) and the per-GPU
    memory estimate (train/memory.py) — no memory used."""
    compressor = preflight.compressor_type(cfg)
    policy = build_policy(cfg.model, device="cpu", meta=True)
    apply_freeze(policy.module_groups(), list(cfg.train.freeze))
    counts = policy.param_counts()
    return {"model_config": cfg.model_config, "preset": preflight.preset_of(cfg), "compressor": compressor,
            "freeze": list(cfg.train.freeze), "params": counts,
            "params_millions": {name: round(c["total"] / 1e6, 2) for name, c in counts.items()},
            "memory": estimate_memory(cfg)}


def loader_options(train_cfg: DictConfig) -> dict[str, Any]:
    """DataLoader keyword arguments from train.num_workers / pin_memory / persistent_workers / prefetch_factor
    (the worker-only ones are dropped at num_workers=0, where torch refuses them)."""
    workers = int(train_cfg.num_workers)
    pin = train_cfg.pin_memory
    pin = torch.cuda.is_available() if pin == "auto" else bool(pin)
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": pin}
    if workers:  # workers ignore Ctrl-C / SIGTERM: the training process checkpoints, then ends them
        opts.update(prefetch_factor=int(train_cfg.prefetch_factor),
                    persistent_workers=bool(train_cfg.persistent_workers), worker_init_fn=ignore_stop_signals)
    return opts


def _build_loader(cfg: DictConfig, dataset: Any, collate: Any, state: TrainerState, acc: Any) -> tuple[Any, Any]:
    sampler = ResumableSampler(len(dataset), seed=int(cfg.train.seed), rank=acc.process_index,
                               world_size=acc.num_processes, consumed=state.consumed, shuffle=bool(cfg.train.shuffle))
    loader = DataLoader(dataset, batch_size=int(cfg.train.per_device_batch_size), sampler=sampler,
                        collate_fn=collate, drop_last=True, generator=torch.Generator().manual_seed(int(cfg.train.seed)),
                        **loader_options(cfg.train))
    return loader, sampler


def run_training(cfg: DictConfig, resume: bool) -> TrainResult:
    """Validate, claim the run dir, build, (resume,) train. Raises Geo3dError for bad input before any step.

    The signal policy (geo3d.core.preemption) is installed first, so a signal during the long setup is honoured
    at the first step; the run-dir lease (train/run_guard.py) is taken before anything is written."""
    refuse_deepspeed()
    flag = PreemptionFlag(announce="train checkpoints at the end of this step, then stops").install()
    try:
        preflight.preflight(cfg)
        store = preflight.check_store_path(cfg)
        guard = claim_run_dir(run_dir_of(cfg), resume)
        ok = False
        try:
            result = _run_training(cfg, resume, store, flag)
            ok = True
            return result
        finally:
            guard.finish(ok)
    finally:
        flag.restore()


def _run_training(cfg: DictConfig, resume: bool, store: str | None, flag: PreemptionFlag) -> TrainResult:
    run_dir, ckpt = run_dir_of(cfg), preflight.resume_checkpoint(cfg, resume)
    acc = make_accelerator(cfg)
    mixture = preflight.open_mixture(cfg)
    reader = preflight.open_checked_store(cfg, store, mixture) if store else None
    spec = reader.spec if reader is not None else None
    del reader  # workers open their own handles
    preflight.check_resume_store(ckpt, spec)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    norm_stats, _ = preflight.norm_stats_for_run(run_dir, mixture, ckpt is not None, acc.is_main_process,
                                             acc.wait_for_everyone)
    set_seed(int(cfg.train.seed))
    policy = build_policy(cfg.model, device=str(acc.device))
    apply_freeze(policy.module_groups(), list(cfg.train.freeze))
    keep_trainable_fp32(policy, acc.mixed_precision)  # fp32 master weights; compute follows acc's autocast
    optimizer = build_optimizer(policy.module_groups(), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    state = TrainerState()
    state.world_size = acc.num_processes
    if cfg.train.ema.enabled:
        state.ema = EMA(policy, float(cfg.train.ema.decay))
    model, optimizer = acc.prepare(policy, optimizer)
    acc.register_for_checkpointing(scheduler, state)
    logger = MetricsLogger(run_dir, acc.is_main_process, cfg.train.wandb, cfg, str(cfg.train.run_name),
                           store=preflight.store_record(cfg, spec))
    if ckpt is not None:
        restore_weights(acc, model, state, ckpt)
        acc.print(f"resuming {run_dir} from step {state.step} ({ckpt})")
    logger.truncate_after(state.step)  # records a killed run wrote after its last checkpoint (all, if none)
    if acc.is_main_process:
        preflight.write_run_records(cfg, run_dir, spec)
    processor = PolicyProcessor.for_training(policy.vlm.model_dir, cfg.model, norm_stats)
    loader, sampler = _build_loader(cfg, GeoTrainDataset(mixture, store), TrainCollator(processor), state, acc)
    parts = TrainingParts(cfg=cfg, run_dir=run_dir, accelerator=acc, model=model, optimizer=optimizer,
                          scheduler=scheduler, loader=loader, sampler=sampler, state=state, logger=logger,
                          policy=Policy(policy, processor, cfg), checkpoint_meta=preflight.checkpoint_meta(cfg, spec))
    result = train_loop(parts, flag, resumed_from=ckpt)
    result.is_main = acc.is_main_process
    return result
