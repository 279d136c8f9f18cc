"""Set up and run one precompute worker from a resolved config; print progress and a summary line."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from geo3d.core.config import data_root_from, save_resolved
from geo3d.core.device import resolve_device
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PreemptionFlag
from geo3d.core.provenance import provenance, utc_now
from geo3d.core.storage_faults import resume_command, storage_guard
from geo3d.core.taps import check_available, parse_taps, tap_store_path
from geo3d.data.lerobot_layout import VIEW_NAMES
from geo3d.data.mixture import LiberoMixture
from geo3d.data.orientation import refuse_old_store
from geo3d.encoders import build_encoder, preflight_encoder
from geo3d.features_store import FeatureStore, StoreLayout, StoreSpec
from geo3d.features_store.metadata import PRECOMPUTE_LOG_DIR, read_metadata, spec_from_metadata
from geo3d.features_store.store import set_trial_record
from geo3d.precompute.decode import DataSource, EpisodeFeeder
from geo3d.precompute.disk_space import check_free_space, fault_hooks
from geo3d.precompute.pipeline import TokenBuffers, run_worker
from geo3d.precompute.shard_planner import ShardPlanner
from geo3d.precompute.shard_writer import ShardWriter
from geo3d.precompute.tap_stores import TapStores
from geo3d.precompute.worker_slot import worker_slot


@dataclass
class RunResult:
    frames: int
    seconds: float
    steady_fps: float | None
    bytes_written: int
    shards: list[int]
    dropped: list[int]
    preempted_by: str | None
    store_complete: bool
    missing_shards: int
    stores: dict[str, str]  # tap -> store path
    trial: dict | None = None  # --limit-frames: what the trial encoded (the stores stay incomplete)


def build_spec(encoder: Any, mixture: Any, store_cfg: Any, tap: str | None = None) -> Any:
    """A tap store's identity: encoder identity (fingerprint, tap) + preprocessing + dataset identity + layout."""
    tap = tap or encoder.tap
    layout_cfg = OmegaConf.to_container(store_cfg, resolve=True) if isinstance(store_cfg, DictConfig) else store_cfg
    return StoreSpec(frames=len(mixture), views=len(VIEW_NAMES), tokens=encoder.tokens_per_view,
                     dim=encoder.tap_dim(tap), encoder=encoder.store_identity(tap), preprocessing=encoder.preprocessing(),
                     dataset=mixture.identity(), layout=StoreLayout.from_config(layout_cfg))


def tap_store_paths(store: str | Path, taps: tuple[str, ...]) -> dict[str, Path]:
    """tap -> its store path (geo3d.core.taps.tap_store_path: info_sharing at --store, others beside it)."""
    return {t: tap_store_path(store, t) for t in taps}


def _log_paths(store_path: Path) -> tuple[Path, Path]:
    d = store_path / PRECOMPUTE_LOG_DIR
    d.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}"
    return d / f"{stem}.config.yaml", d / f"{stem}.shards.jsonl"


def _prefetch(p: Any, workers: int) -> int:
    """Episodes in flight ahead of the encoder: enough to keep every decode worker busy."""
    if p.prefetch_episodes is not None:
        return int(p.prefetch_episodes)
    return max(2, 2 * workers)


def cpu_split(p: Any, device: str) -> tuple[int, int]:
    """(decode workers, writer threads): as configured, or `auto`. On CUDA the encoder outruns a few decode
    processes: on an H200 (docs/gpu.md) 2 decoders + 1 writer fed the 1.2 TFLOP/frame encoder 191 of the 349
    frames/s it can take, 8 + 4 on 16 CPUs all of them; so auto there = half the usable CPUs decoding (at most 8)
    and a quarter writing (at most 4). On a CPU device the encoder needs the cores: 2 and 1. Workers started by
    torchrun on one node share its CPUs: each counts its LOCAL_WORLD_SIZE-th."""
    cuda = str(device).startswith("cuda")
    n = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    workers = (min(8, max(2, n // 2)) if cuda else 2) if p.decode_workers == "auto" else int(p.decode_workers)
    writers = (min(4, max(1, n // 4)) if cuda else 1) if p.writer_threads == "auto" else int(p.writer_threads)
    return workers, writers


def usable_cpus() -> int:
    """CPUs this process may run on (a SLURM/cgroup CPU set, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_threads(p: Any, workers: int) -> int:
    """On a CPU device: oversubscribed OpenMP threads (decode processes, other jobs) slow the encoder ~10x, so
    by default each decode process gets a CPU; with decode_workers=0 the encoder uses every CPU."""
    return int(p.cpu_threads or max(1, usable_cpus() - workers))


def full_batches(setting: Any, device: str) -> bool:
    """precompute.full_batches: auto = on CUDA (its kernels are chosen per batch shape), else as given."""
    if str(setting) == "auto":
        return str(device).startswith("cuda")
    if isinstance(setting, bool):
        return setting
    raise Geo3dError(f"precompute.full_batches must be auto, true or false, got {setting!r}")


def _note_other_device(recorded: Any, mine: dict[str, Any]) -> None:
    """Resuming a store made on another device type is allowed, but its tokens will mix two kernel sets."""
    theirs = (recorded.get("runtime") or {}).get("device_type")
    if theirs and theirs != mine["device_type"]:
        print(f"precompute: note: this store was created on {theirs}, this worker encodes on "
              f"{mine['device_type']}: tokens of the two device types differ by bf16 rounding (precompute/README.md, "
              "\"Token precision\"); each shard's marker records the device that wrote it", file=sys.stderr, flush=True)


def _refuse_old_orientation(store_path: Path, overwrite: bool) -> None:
    """Resuming a store made with the old (upside-down) image path would mix two orientations: refuse."""
    if not overwrite and (store_path / "zarr.json").is_file():
        refuse_old_store(spec_from_metadata(read_metadata(store_path)).preprocessing, store_path)


def run_precompute(cfg: DictConfig) -> RunResult:
    """One worker: check, start decoding, build the encoder, open/create the store, encode until done."""
    p = cfg.precompute
    if not p.store:
        raise Geo3dError("no store path: pass --store PATH (or precompute.store=PATH)")
    slot = worker_slot(p.shard, p.num_shards)
    if p.overwrite and slot.world > 1:
        raise Geo3dError(f"--overwrite with {slot.world} workers would let each worker delete the others' work: "
                         "delete the old store (or run one worker with --overwrite) first, then start the workers")
    device = resolve_device(str(p.device), slot.local_rank)
    full_batches(p.full_batches, device)  # a bad setting fails here, before any slow work
    workers, writers = cpu_split(p, device)
    if device == "cpu":
        torch.set_num_threads(_cpu_threads(p, workers))
    image_size, data_root = int(cfg.data.image_size), data_root_from(cfg)
    taps = parse_taps(p.taps)  # names checked before any slow work; which ones this encoder has: once built
    preflight_encoder(cfg.encoder, image_size)  # bad weights / package / hub code / size: before any other work
    mixture = LiberoMixture(cfg.data.suite, data_root, image_size=image_size).validate_files()
    feeder = EpisodeFeeder(mixture.episodes(), DataSource(cfg.data.suite, data_root, image_size),
                           workers=workers, prefetch=_prefetch(p, workers))
    try:
        feeder.warm_up()  # decode workers start while the model is built (MapAnything: ~20 s)
        encoder = build_encoder(cfg.encoder, image_size, device, tap=taps[0])
        check_available(taps, encoder.available_taps(), encoder.name)
        return _run(cfg, slot, device, encoder, taps, mixture, feeder)
    finally:
        feeder.close()


def _run(cfg: DictConfig, slot: Any, device: str, encoder: Any, taps: tuple[str, ...], mixture: Any,
         feeder: Any) -> RunResult:
    """A full disk, a quota, EIO/EROFS or a vanished store directory -> one StorageFault (exit 74)."""
    paths = tap_store_paths(cfg.precompute.store, taps)
    specs = {t: build_spec(encoder, mixture, cfg.store, t) for t in taps}
    with storage_guard("precompute", cfg.precompute.store, resume=resume_command(drop=("--overwrite",)),
                       **fault_hooks({paths[t]: specs[t] for t in taps})):
        return _run_store(cfg, slot, device, encoder, mixture, feeder, paths, specs)


def _open_stores(cfg: DictConfig, slot: Any, device: str, encoder: Any, paths: dict[str, Path],
                 specs: dict[str, Any]) -> tuple[Any, dict[str, Path]]:
    """Open or create every tap store, record the run's config and provenance in each; a TapStores group and
    {tap: its store's shard log}."""
    p = cfg.precompute
    for path in paths.values():
        _refuse_old_orientation(path, bool(p.overwrite))
    group = TapStores({t: FeatureStore.open_or_create(paths[t], specs[t], overwrite=bool(p.overwrite)) for t in paths})
    check_free_space({paths[t]: specs[t] for t in paths}, group.path, bool(p.require_space))
    log_paths: dict[str, Path] = {}
    for tap, store in group.stores.items():
        cfg_path, log_path = _log_paths(store.path)
        save_resolved(cfg, cfg_path.parent, cfg_path.name)
        cfg_path.with_name(cfg_path.name.replace(".config.yaml", ".provenance.json")).write_text(json.dumps(
            {**provenance(), "worker": vars(slot), "device": str(device), "encoder_versions": encoder.versions(),
             "tap": tap, "taps_of_this_pass": {t: str(s.path) for t, s in group.stores.items()},
             "data_root": data_root_from(cfg)},  # effective (flag/config, else $GEO3D_DATA_ROOT)
            indent=2))
        log_paths[tap] = log_path
    return group, log_paths


def _run_store(cfg: DictConfig, slot: Any, device: str, encoder: Any, mixture: Any, feeder: Any,
               paths: dict[str, Path], specs: dict[str, Any]) -> RunResult:
    p = cfg.precompute
    group, log_paths = _open_stores(cfg, slot, device, encoder, paths, specs)
    end = trial_end(group, p.limit_frames)
    todo_by_tap = missing_by_tap(group, end)
    missing = sorted(set().union(*todo_by_tap.values()))
    todo = sum(len(group.shard_range(i)) for i in missing)
    where = ", ".join(f"{t} -> {s.path}" for t, s in group.stores.items())
    print(f"precompute: {len(mixture)} frames, {group.num_shards} shards ({len(missing)} to do); {where}; "
          f"encoder {encoder.name} on {device}; worker {slot.rank}/{slot.world} ({slot.source})",
          file=sys.stderr, flush=True)
    _note_other_device(group.first.spec.encoder, encoder.runtime())
    (workers, threads), batch = cpu_split(p, device), int(p.batch_size)
    # token buffers: the shards one batch can touch (ceil(batch / shard) + a partly encoded one + a short last
    # shard), one queued for the writer, one per writer thread
    in_flight = -(-batch // group.first.spec.shard_frames) + 2
    work = [t for t, todo in todo_by_tap.items() if todo]  # a complete store needs no buffers (nor claims)
    buffers = TokenBuffers({t: (specs[t].shard_frames, *specs[t].frame_shape) for t in work},
                           pinned=str(device).startswith("cuda"), count=in_flight + 1 + threads)
    full = full_batches(p.full_batches, device)
    writer_info = {"device": str(device), "worker": f"{slot.rank}/{slot.world}", "versions": encoder.versions(),
                   "runtime": encoder.runtime(), "batch_size": batch, "full_batches": full,
                   "decode_workers": workers, "writer_threads": threads}
    writer = ShardWriter(group, writer_info, log_paths if p.log_shards else None, depth=1, threads=threads,
                         recycle=buffers.give_back)
    preempt = PreemptionFlag(announce="precompute stops at the next safe point (the current shard is finished "
                             "if quick, else dropped)").install()
    bar = tqdm(total=todo, unit="frame", desc="precompute", dynamic_ncols=True, smoothing=0.1,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)  # SLURM logs: a line every 30 s
    try:
        planner = ShardPlanner(group.only(work), slot.rank, slot.world, end) if work else ()  # (): no claims
        stats = run_worker(encoder, group, planner, feeder, writer, buffers, batch, preempt,
                           float(p.preempt_grace_s), bar, full)
        writer.close()  # commits every shard already encoded, even after a signal
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
        preempt.restore()
    left = group.missing_shards()
    trial = record_trial(group, p.limit_frames, end)
    return RunResult(stats.frames, stats.seconds, stats.steady_fps, writer.bytes_written, stats.shards,
                     stats.dropped, preempt.signal_name, not left, len(left),
                     {t: str(s.path) for t, s in group.stores.items()}, trial)


def trial_end(group: Any, limit_frames: int | None) -> int:
    """The shards a run encodes: all, or (a trial, --limit-frames N) those holding the first N frames."""
    if limit_frames is None:
        return group.num_shards
    return min(group.num_shards, -(-int(limit_frames) // group.first.spec.shard_frames))


def missing_by_tap(group: Any, end: int) -> dict[str, list[int]]:
    """tap -> the shards below `end` its own store still lacks (the group's missing shards are their union)."""
    return {t: [i for i in s.missing_shards() if i < end] for t, s in group.stores.items()}


def record_trial(group: Any, limit_frames: int | None, end: int) -> dict | None:
    """Mark each tap store by its own missing shards (verify-cache and train name a trial): one this trial
    (--limit-frames) left incomplete gets the record, a complete one loses any old record, even when another store
    of the pass is still incomplete (e.g. a finished info_sharing store beside a new encoder store). Returns the
    record when some store holds it, else None."""
    spec = group.first.spec
    record = None if limit_frames is None else {
        "limit_frames": int(limit_frames), "shards": end, "num_shards": group.num_shards,
        "shard_frames": spec.shard_frames, "frames": min(end * spec.shard_frames, spec.frames),
        "total_frames": spec.frames, "made_utc": utc_now()}
    marked = False
    for store in group.stores.values():
        if not store.missing_shards():
            set_trial_record(store.path, None)
        elif record is not None:
            set_trial_record(store.path, record)
            marked = True
    return record if marked else None
