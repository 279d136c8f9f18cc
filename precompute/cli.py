"""`geo3d precompute`: stage 1, encode every frame of a suite with the frozen geometry encoder into a store.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from omegaconf import DictConfig

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, build_config, handle_errors
from geo3d.core.config_schema import DATA_RULES, Float, Int, OneOf, Rule, Schema, Str
from geo3d.core.preemption import exit_code_for
from geo3d.features_store.spec import StoreLayout

DEFAULTS = ("data", "store", "precompute")
DTYPES = OneOf("auto", "bfloat16", "float32")


def auto_or_count(least: int) -> Rule:
    """`auto` (resolved per device: precompute.run.cpu_split) or a count >= least."""
    return Rule(("str", "int"), min=least, choices=("auto",))


# Types and ranges configs/precompute.yaml's defaults cannot say (the type of a null default, bounds, choices).
RULES = {
    **DATA_RULES,
    "encoder.name": OneOf("tiny", "mapanything"),
    "encoder.tokens_per_view": Int(min=1),
    "encoder.tiny.width": Int(min=1), "encoder.tiny.depth": Int(min=1), "encoder.tiny.heads": Int(min=1),
    "encoder.tiny.out_dim": Int(min=1), "encoder.tiny.dtype": DTYPES,
    "encoder.mapanything.weights": Str(null=True), "encoder.mapanything.dtype": DTYPES,
    "precompute.store": Str(null=True),
    "precompute.taps": Rule(("list", "str")),  # a YAML list, or `--taps a,b` / `precompute.taps=a,b`
    "precompute.batch_size": Int(min=1),
    "precompute.full_batches": OneOf("auto", also=("bool",)),
    "precompute.decode_workers": auto_or_count(0),
    "precompute.prefetch_episodes": Int(min=1, null=True),
    "precompute.cpu_threads": Int(min=0, null=True),
    "precompute.shard": Int(min=0, null=True),
    "precompute.num_shards": Int(min=1, null=True),
    "precompute.writer_threads": auto_or_count(1),
    "precompute.preempt_grace_s": Float(min=0),
    "precompute.limit_frames": Int(min=1, null=True),
}


FLAG_NAMES = {"data.suite": "--suite", "data.data_root": "--data-root", "encoder.name": "--encoder",
              "encoder.mapanything.weights": "--weights", "precompute.store": "--store", "precompute.shard": "--shard",
              "precompute.num_shards": "--num-shards", "precompute.batch_size": "--batch-size",
              "precompute.device": "--device", "precompute.limit_frames": "--limit-frames", "precompute.taps": "--taps"}


@functools.lru_cache(maxsize=None)
def config_schema() -> Schema:
    """configs/{data,store,precompute}.yaml + the store layout's class defaults (StoreLayout checks its types)."""
    return Schema("precompute", DEFAULTS, sections={"store": dataclasses.asdict(StoreLayout())}, rules=RULES)


def precompute_config(overrides: Optional[List[str]] = None, config: Optional[List[Path]] = None,
                      flags: Optional[dict] = None) -> DictConfig:
    """`geo3d precompute`'s config (the benches compose theirs here too)."""
    return build_config(DEFAULTS, config, overrides, flags, schema=config_schema(), labels=FLAG_NAMES)


@handle_errors
def precompute(
    suite: Optional[str] = typer.Option(None, "--suite", help="libero_spatial|libero_object|libero_goal|libero_10|"
                                                              "libero_all|demo"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder holding the suite folders."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="tiny | mapanything"),
    weights: Optional[str] = typer.Option(None, "--weights", help="MapAnything weights dir (config.json + "
                                                                  "model.safetensors)."),
    store: Optional[str] = typer.Option(None, "--store", help="Path of the Zarr features store to build (the "
                                        "info_sharing tap's; other taps' stores go beside it as <name>@<tap>.zarr)."),
    taps: Optional[str] = typer.Option(None, "--taps", help="Comma-separated encoder taps, one store each from the "
                                       "same forward (precompute.taps), e.g. info_sharing,encoder."),
    shard: Optional[int] = typer.Option(None, "--shard", help="This worker's index (default: SLURM array / "
                                                              "torchrun rank, else 0)."),
    num_shards: Optional[int] = typer.Option(None, "--num-shards", help="Number of workers (default: from the "
                                                                        "environment, else 1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Frames per encoder call."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing store at --store first."),
    require_space: bool = typer.Option(False, "--require-space", help="Refuse to start when the free disk at "
                                       "--store is below what the store still needs (default: warn)."),
    limit_frames: Optional[int] = typer.Option(None, "--limit-frames", help="A trial: encode only the store shards "
                                               "holding the first N frames. The store stays incomplete, so no run "
                                               "trains on it; rerun without the flag to complete it."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Encode every frame into the store; resumable, shardable (any number of workers), preemption-safe."""
    flags = {"data.suite": suite, "data.data_root": data_root, "encoder.name": encoder,
             "encoder.mapanything.weights": weights, "precompute.store": store, "precompute.taps": taps, "precompute.shard": shard,
             "precompute.num_shards": num_shards, "precompute.batch_size": batch_size, "precompute.device": device,
             "precompute.overwrite": True if overwrite else None,
             "precompute.require_space": True if require_space else None, "precompute.limit_frames": limit_frames}
    cfg = precompute_config(overrides, config, flags)

    from geo3d.precompute.run import run_precompute

    r = run_precompute(cfg)
    fps = r.frames / r.seconds if r.seconds > 0 else 0.0
    steady = f", {r.steady_fps:.1f} after the first shard" if r.steady_fps else ""
    stores = ", ".join(f"{tap} {path}" for tap, path in r.stores.items())
    print(f"precompute: {r.frames} frames in {r.seconds:.1f} s ({fps:.1f} frames/s{steady}), {r.bytes_written} bytes "
          f"written, {len(r.shards)} shards committed by this worker; store{'s' if len(r.stores) > 1 else ''} "
          f"{'complete' if r.store_complete else f'incomplete ({r.missing_shards} shards left)'}: {stores}", flush=True)
    if r.preempted_by:
        dropped = f"; dropped unfinished shard(s) {r.dropped}" if r.dropped else ""
        code = exit_code_for(r.preempted_by)  # 130 for Ctrl-C, 75 (requeue) for SIGTERM/SIGUSR1
        how = " (Ctrl-C)" if r.preempted_by == "SIGINT" else ""
        print(f"precompute: stopped on {r.preempted_by}{how}{dropped}; committed work is kept. Rerun the same command "
              f"to resume (exit {code}).", file=sys.stderr, flush=True)
        raise typer.Exit(code)
    if r.trial is not None:
        t = r.trial
        print(f"precompute: trial store: frames 0..{t['frames'] - 1} of {t['total_frames']} (--limit-frames "
              f"{t['limit_frames']}, whole shards of {t['shard_frames']}); it stays incomplete, so no run "
              f"trains on it; rerun without --limit-frames to complete it", file=sys.stderr, flush=True)
    elif not r.store_complete:
        print(f"precompute: {r.missing_shards} shard(s) are held by other live workers; they will commit them "
              f"(rerun this command if they were killed)", file=sys.stderr, flush=True)
