"""Data and disk: each suite's folder/layout version/frame count, free disk vs the store's size (the estimate
of features_store/store_size.py), an existing store's completeness, and the checkpoint to evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from geo3d.cli.doctor.findings import FAIL, NA, OK, WARN, Finding, missing
from geo3d.core.errors import Geo3dError
from geo3d.core.storage_faults import existing_ancestor, free_bytes, human_bytes
from geo3d.data.suites import SUITE_FOLDERS, find_suite_folder, open_dataset, resolve_data_root, suite_members
from geo3d.features_store.store_size import estimate_bytes, remaining_bytes, spec_bytes
from geo3d.policy.pretrained import read_marker
from geo3d.policy.run_dir import latest_checkpoint
from geo3d.train.disk_space import checkpoint_bytes_from_counts
from geo3d.train.run_config import run_dir_of


def check_suites(plan: Any) -> Iterator[Finding]:
    try:
        root = resolve_data_root(plan.suite, plan.data_root)
        members = suite_members(plan.suite)
    except Geo3dError as e:
        yield Finding("data", FAIL, str(e).split(";")[0], "pass --suite and --data-root (or $GEO3D_DATA_ROOT)")
        return
    total = 0
    for m in members:
        try:  # the LeRobot folder or a LIBERO HDF5 one, exactly as the run resolves it
            path, why = find_suite_folder(root, m)
            ds = open_dataset(path) if path is not None else None
        except Geo3dError as e:
            yield Finding(f"suite {m}", FAIL, str(e).split(";")[0], "re-download the dataset folder, or fix --data-root")
            continue
        if ds is None:
            yield Finding(f"suite {m}", FAIL, why, f"download {SUITE_FOLDERS[m]} into {root}, or fix --data-root")
            continue
        total += ds.num_frames
        plan.frames_by_suite[m] = ds.num_frames
        yield Finding(f"suite {m}", OK, f"{path}: {ds.codebase_version}, {ds.num_episodes} episodes, "
                                        f"{ds.num_frames} frames")
    if len(members) > 1 and len(plan.frames_by_suite) == len(members):
        yield Finding(f"suite {plan.suite}", OK, f"{total} frames in {len(members)} suites")


def check_store(plan: Any) -> Iterator[Finding]:
    """An existing store: committed shards vs all (cheap: a directory listing) and free disk for the rest;
    no store yet: free disk vs the size the config's store will have."""
    if not plan.store:
        yield missing("store", plan.needs_store, "no --store given", "pass --store PATH")
        return
    store = Path(plan.store)
    meta = plan.store_meta()
    free = free_bytes(store)
    where = existing_ancestor(store)
    if meta is not None:
        from geo3d.features_store.spec import StoreSpec
        from geo3d.features_store.store import committed_shards

        spec = StoreSpec.from_dict(meta["spec"])
        done = committed_shards(store)
        need = remaining_bytes(spec, done)
        complete = len(done) == spec.num_shards
        yield Finding("store completeness", OK if complete or plan.needs_precompute else FAIL,
                      f"{store}: {len(done)}/{spec.num_shards} shards committed ({spec.frames} frames, "
                      f"~{human_bytes(spec_bytes(spec))}); the full proof is `geo3d verify-cache {store}`",
                      f"finish it: geo3d precompute --store {store} ... (the same flags as before)")
    else:
        if not plan.frames_by_suite:
            yield Finding("store disk space", NA, "cannot size the store: the suite's frame count is unknown")
            return
        frames = sum(plan.frames_by_suite.values())
        lay = plan.store_layout
        need = estimate_bytes(frames, 2, plan.tokens_per_view, plan.token_dim, lay.shard_frames, lay.compressor,
                              lay.chunk_frames)
        if plan.needs_train and not plan.needs_precompute and plan.uses_geometry:
            yield Finding("store", FAIL, f"{store} is not a features store yet", f"run geo3d precompute --store {store}")
    ok = free is None or free >= need
    yield Finding("store disk space", OK if ok else (FAIL if plan.needs_precompute else WARN),
                  f"{human_bytes(free)} free at {where}; the store still needs ~{human_bytes(need)} "
                  f"(features_store/store_size.py estimate; a quota may be lower: `quota -s` / `lfs quota`)",
                  "free space, use store.compressor=zstd (~0.78x), or choose another --store")


def check_run_disk(plan: Any) -> Iterator[Finding]:
    """Free disk at the training run directory vs the checkpoints the run will keep (train/disk_space.py)."""
    t = plan.train_cfg.train
    one = checkpoint_bytes_from_counts(plan.param_counts(), bool(t.ema.enabled), bool(t.checkpoint.starvla_pt))
    saves = -(-int(t.max_steps) // int(t.save_interval))
    kept = min(saves, int(t.keep_last)) if t.keep_last else saves
    need = one * (kept + 1)  # + the one being written before the oldest is pruned
    run_dir = run_dir_of(plan.train_cfg)
    free = free_bytes(run_dir)
    ok = free is None or free >= need
    yield Finding("checkpoint disk space", OK if ok else FAIL,
                  f"{human_bytes(free)} free at {existing_ancestor(run_dir)}; {kept} kept checkpoint(s) of "
                  f"~{human_bytes(one)} (parameter-count estimate) need ~{human_bytes(need)}",
                  "free space, set train.keep_last=N, or --out on a larger filesystem")


def check_checkpoint(plan: Any) -> Iterator[Finding]:
    if not plan.ckpt:
        yield Finding("checkpoint", NA, "no --ckpt given (needed only by eval/serve)")
        return
    path = Path(plan.ckpt)
    ckpt = path if (path / "checkpoint.json").is_file() else latest_checkpoint(path)
    if ckpt is None:
        yield Finding("checkpoint", FAIL, f"{path} holds no complete checkpoint (no checkpoint.json)",
                      "pass a checkpoints/steps_N dir or a run dir that has one")
        return
    try:  # an old-format checkpoint or a missing weight shard is a finding, not a crash
        from geo3d.policy.weights_io import weight_files
        marker = read_marker(ckpt)
        weight_files(ckpt)
    except Geo3dError as e:
        yield Finding("checkpoint", FAIL, str(e), "copy the whole checkpoint directory, or retrain")
        return
    absent = [f for f in ("config.yaml", "norm_stats.json", "processor.json", "vlm/config.json")
              if not (ckpt / f).is_file()]
    yield (Finding("checkpoint", FAIL, f"{ckpt} lacks {absent}", "copy the whole checkpoint directory") if absent
           else Finding("checkpoint", OK, f"{ckpt}: step {marker.get('step')}, complete"))
