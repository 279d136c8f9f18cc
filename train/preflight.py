"""Turn a composed config into the parts of a run, validating every input before anything is trained.

Order matters: cheap checks first (compressor name, store path, run directory state), then the data and
the store join check, then the model. Nothing here imports the geometry encoder (`precompute`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from geo3d.core.config import data_root_from, save_resolved
from geo3d.core.errors import Geo3dError, StoreError
from geo3d.core.provenance import provenance, without_runtime
from geo3d.core.taps import refuse_other_tap, tap_of
from geo3d.data.lerobot_layout import STATE_DIM
from geo3d.data.mixture import LiberoMixture
from geo3d.data.norm_stats import compute_norm_stats, load_norm_stats, save_norm_stats
from geo3d.data.orientation import orientation_probe, refuse_old_store
from geo3d.features_store import FeatureReader
from geo3d.features_store.spec import diff_specs
from geo3d.policy.configuration_policy import COMPRESSOR_TYPES, PolicyConfig
from geo3d.policy.pretrained import read_marker
from geo3d.policy.run_dir import NORM_STATS_FILE, PROVENANCE_FILE, RESOLVED_CONFIG, latest_checkpoint
from geo3d.train.run_config import resume_differences, run_dir_of
from geo3d.train.store_check import check_store_matches_dataset, check_token_shape


def compressor_type(cfg: DictConfig) -> str:
    """The configured compressor, refused early (before data or model) when the policy does not know it."""
    name = OmegaConf.select(cfg, "model.compressor.type", default=None)
    if name not in COMPRESSOR_TYPES:
        raise Geo3dError(f"unknown compressor {name!r}; use --compressor one of {list(COMPRESSOR_TYPES)}")
    return str(name)


def preflight(cfg: DictConfig) -> None:
    """Config checks that need no data: model config valid, compressor known, optional tools installed."""
    compressor_type(cfg)
    head = PolicyConfig.from_cfg(cfg.model).action_head
    if head.use_state and head.state_dim != STATE_DIM:  # the fork preset's 7-wide encoder is built, never fed
        raise Geo3dError(f"model.action_head.use_state=true needs state_dim={STATE_DIM} (the LIBERO state is "
                         f"{STATE_DIM}-wide), got {head.state_dim}; set model.action_head.state_dim={STATE_DIM}")
    if cfg.train.wandb.enabled and importlib.util.find_spec("wandb") is None:
        raise Geo3dError("train.wandb.enabled=true but wandb is not installed: pip install 'geo3d[wandb]', or "
                         "set train.wandb.enabled=false")


def uses_geometry(cfg: DictConfig) -> bool:
    return compressor_type(cfg) != "none"


def check_store_path(cfg: DictConfig) -> str | None:
    """The store path when the compressor needs geometry (required then, and must exist)."""
    store = cfg.train.store
    if not uses_geometry(cfg):
        if OmegaConf.select(cfg, "train.tap", default=None) is not None:
            raise Geo3dError("compressor 'none' reads no geometry tokens, so it has no encoder tap: drop --tap "
                             "(train.tap); its runs are the baseline of every tap")
        return None
    if not store:
        raise StoreError(f"compressor {compressor_type(cfg)!r} needs cached geometry tokens: pass --store PATH "
                         f"(made by `geo3d precompute --suite {cfg.data.suite} --store PATH`), or use "
                         f"--compressor none")
    if not Path(store).exists():
        raise StoreError(f"features store not found: {store}; run `geo3d precompute --suite {cfg.data.suite} "
                         f"--store {store}` first, or fix --store")
    return str(store)


def resume_checkpoint(cfg: DictConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), refused when the config changed a fixed key.
    Whether the run dir may be used at all is train/run_guard.py's claim, made before this."""
    run_dir = run_dir_of(cfg)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        read_marker(ckpt)  # refuses an old-format checkpoint or one trained with the old image orientation
        saved = OmegaConf.load(run_dir / RESOLVED_CONFIG)
        diffs = resume_differences(saved, cfg)  # type: ignore[arg-type]
        if diffs:
            raise Geo3dError(f"--resume: the config differs from the run's {run_dir / RESOLVED_CONFIG}:\n  "
                             + "\n  ".join(diffs) + "\nresume with the same config (only max_steps, intervals, "
                             "workers, wandb and paths may change), or start a new run with --out")
    return ckpt


def open_mixture(cfg: DictConfig) -> Any:
    mixture = LiberoMixture(cfg.data.suite, data_root=data_root_from(cfg),
                            action_horizon=int(cfg.data.action_horizon), image_size=int(cfg.data.image_size))
    return mixture.validate_files()  # the dataset check precompute and verify-cache run too


def open_checked_store(cfg: DictConfig, store: str, mixture: Any) -> Any:
    """Open the store and refuse it unless it matches the model's token shape and this dataset."""
    reader = FeatureReader(store)
    refuse_other_tap(reader.spec.tap, OmegaConf.select(cfg, "train.tap", default=None), store,
                     "this run (--tap / train.tap)", use="pass --store {}")
    refuse_old_store(reader.spec.preprocessing, store)
    check_token_shape(reader.spec, cfg.model.geometry, store)
    check_store_matches_dataset(reader, mixture, store, int(cfg.train.store_check_frames))
    return reader


def norm_stats_for_run(run_dir: Path, mixture: Any, resuming: bool, is_main: bool, wait: Any) -> tuple[Any, Path]:
    """The run's norm stats: computed once over all frames at the start, then always read from the run dir."""
    path = run_dir / NORM_STATS_FILE
    if not (resuming and path.exists()):
        if is_main:
            save_norm_stats(compute_norm_stats(mixture), path)
        wait()
    return load_norm_stats(path), path


def write_run_records(cfg: DictConfig, run_dir: Path, store_spec: Any) -> None:
    """resolved_config.yaml and provenance.json (the latter appended per launch so resumes are recorded)."""
    save_resolved(cfg, run_dir, RESOLVED_CONFIG)
    path = run_dir / PROVENANCE_FILE
    launches = json.loads(path.read_text()) if path.exists() else []
    launches.append({**provenance(), "preset": preset_of(cfg), "store": store_record(cfg, store_spec)})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(launches, indent=2, default=str))
    os.replace(tmp, path)


def store_record(cfg: DictConfig, spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {"path": str(cfg.train.store), "tap": spec.tap, "frames": spec.frames,
            "shape": [spec.views, spec.tokens, spec.dim], "encoder": dict(spec.encoder),
            "preprocessing": dict(spec.preprocessing)}


def check_resume_store(ckpt: Path | None, spec: Any) -> None:
    """A resumed run must read the same tokens it started on: the store path may move (train.store may change on
    --resume), its encoder identity (weights, tap, dtype) may not. The identity's informational runtime (device,
    kernel versions) is left out on both sides, as attaching a store does: a store remade or resumed on another
    device or torch holds the same tokens by that identity."""
    if ckpt is None or spec is None:
        return
    recorded = (read_marker(ckpt).get("store") or {}).get("encoder")
    if not recorded:
        return
    diffs = diff_specs(without_runtime({**recorded, "tap": tap_of(recorded)}), without_runtime(spec.encoder))
    if diffs:
        raise StoreError(f"--resume: the store's tokens differ from those {ckpt} was trained on:\n  "
                         + "\n  ".join(d.replace("store has", "checkpoint has").replace("requested", "store has")
                                        for d in diffs)
                         + "\nresume with the run's own store (checkpoint.json 'store.path'), or start a new run")


def checkpoint_meta(cfg: DictConfig, spec: Any) -> dict[str, Any]:
    """What a checkpoint records beside the weights: enough to rebuild inputs at inference."""
    return {"compressor": compressor_type(cfg), "tap": spec.tap if spec is not None else None,
            "preset": preset_of(cfg), "store": store_record(cfg, spec),
            "provenance": provenance(), "image_orientation": orientation_probe()}


def preset_of(cfg: DictConfig) -> str | None:
    """The design preset the run was composed with (configs/preset/<name>.yaml), None if none was named."""
    value = OmegaConf.select(cfg, "preset", default=None)
    return str(value) if value is not None else None
