"""`geo3d train` end to end: validate inputs, build the parts, restore a checkpoint, run the loop.

Also the dry run: build the model on the meta device (no memory, no weights read) and report sizes.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from geo3d.core.errors import Geo3dError
from geo3d.train import preflight as setup
from geo3d.train.checkpoint import TrainerState
from geo3d.train.trainer import TrainingParts, TrainResult, train_loop


def make_accelerator(cfg: DictConfig) -> Any:
    from accelerate import Accelerator
    from geo3d.train.precision import accelerate_precision
    precision = accelerate_precision(cfg.train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    # cpu=True without CUDA: lets torchrun/accelerate-launched CPU processes form a gloo group (MULTI_CPU)
    acc = Accelerator(gradient_accumulation_steps=int(cfg.train.grad_accum_steps), mixed_precision=precision,
                      step_scheduler_with_optimizer=False, cpu=not torch.cuda.is_available())
    _check_deepspeed(acc, cfg)
    return acc


def _check_deepspeed(acc: Any, cfg: DictConfig) -> None:
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    want = {"gradient_accumulation_steps": int(cfg.train.grad_accum_steps),
            "gradient_clipping": float(cfg.train.max_grad_norm)}
    bad = {k: (ds.get(k), v) for k, v in want.items() if ds.get(k) not in (v, "auto")}
    if bad:
        raise Geo3dError(f"the DeepSpeed config disagrees with the train config (deepspeed, train): {bad}; make "
                         f"configs/accelerate/deepspeed_zero2.yaml match train.grad_accum_steps/max_grad_norm")
    # geo3d shards data itself (train/sampler.py) and never passes a DataLoader to prepare(), so DeepSpeed
    # cannot infer its micro-batch size: give it the configured one.
    ds["train_micro_batch_size_per_gpu"] = int(cfg.train.per_device_batch_size)


def dry_run(cfg: DictConfig) -> dict[str, Any]:
    """Parameter counts per top-level module (total and trainable, after the freeze list) and the per-GPU
    memory estimate (train/memory.py) — no memory used."""
    from geo3d.train.memory import estimate_memory
    from geo3d.policy.policy import build_policy
    from geo3d.train.optim import apply_freeze
    compressor = setup.compressor_type(cfg)
    policy = build_policy(cfg.model, device="cpu", meta=True)
    apply_freeze(policy.module_groups(), list(cfg.train.freeze))
    counts = policy.param_counts()
    return {"model_config": cfg.model_config, "preset": setup.preset_of(cfg), "compressor": compressor,
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
    if workers:
        opts.update(prefetch_factor=int(train_cfg.prefetch_factor),
                    persistent_workers=bool(train_cfg.persistent_workers))
    return opts


def _build_loader(cfg: DictConfig, dataset: Any, collate: Any, state: TrainerState, acc: Any) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader
    from geo3d.train.sampler import ResumableSampler
    sampler = ResumableSampler(len(dataset), seed=int(cfg.train.seed), rank=acc.process_index,
                               world_size=acc.num_processes, consumed=state.consumed, shuffle=bool(cfg.train.shuffle))
    loader = DataLoader(dataset, batch_size=int(cfg.train.per_device_batch_size), sampler=sampler,
                        collate_fn=collate, drop_last=True, generator=torch.Generator().manual_seed(int(cfg.train.seed)),
                        **loader_options(cfg.train))
    return loader, sampler


def run_training(cfg: DictConfig, resume: bool) -> TrainResult:
    """Validate, build, (resume,) train. Raises Geo3dError for bad input before any training step."""
    from geo3d.core.preemption import PreemptionFlag
    flag = PreemptionFlag().install()
    try:
        return _run_training(cfg, resume, flag)
    finally:
        flag.restore()


def _run_training(cfg: DictConfig, resume: bool, flag: Any) -> TrainResult:
    from accelerate.utils import set_seed
    from geo3d.train.dataset import GeoTrainDataset, TrainCollator
    from geo3d.train.metrics import MetricsLogger
    from geo3d.train.checkpoint import restore_weights
    from geo3d.policy.policy import build_policy
    from geo3d.policy.processor_pipeline import NormalizationSpec, PolicyPipeline
    from geo3d.train.optim import EMA, apply_freeze, build_optimizer, build_scheduler
    from geo3d.train.precision import keep_trainable_fp32

    setup.preflight(cfg)
    store = setup.check_store_path(cfg)
    run_dir, ckpt = setup.prepare_run_dir(cfg, resume)
    acc = make_accelerator(cfg)
    mixture = setup.open_mixture(cfg)
    reader = setup.open_checked_store(cfg, store, mixture) if store else None
    spec = reader.spec if reader is not None else None
    del reader  # workers open their own handles
    setup.check_resume_store(ckpt, spec)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    norm_stats, _ = setup.norm_stats_for_run(run_dir, mixture, ckpt is not None, acc.is_main_process,
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
                           store=setup._store_record(cfg, spec))
    if ckpt is not None:
        restore_weights(acc, model, state, ckpt)
        acc.print(f"resuming {run_dir} from step {state.step} ({ckpt})")
    logger.truncate_after(state.step)  # records a killed run wrote after its last checkpoint (all, if none)
    if acc.is_main_process:
        setup.write_run_records(cfg, run_dir, spec)
    pipeline = PolicyPipeline(policy.processor, norm_stats, NormalizationSpec.from_cfg(cfg.model.normalization))
    loader, sampler = _build_loader(cfg, GeoTrainDataset(mixture, store), TrainCollator(pipeline), state, acc)
    parts = TrainingParts(cfg=cfg, run_dir=run_dir, accelerator=acc, model=model, optimizer=optimizer,
                          scheduler=scheduler, loader=loader, sampler=sampler, state=state, logger=logger,
                          pipeline=pipeline, checkpoint_meta=setup.checkpoint_meta(cfg, spec))
    result = train_loop(parts, flag, resumed_from=ckpt)
    result.is_main = acc.is_main_process
    return result
