"""`geo3d precompute`: stage 1, encode every frame of a suite with the frozen geometry encoder into a store.

Light at import time (no torch / zarr): the heavy work is imported inside the command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, build_config, handle_errors

DEFAULTS = ("data", "store", "precompute")


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
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Encode every frame into the store; resumable, shardable (any number of workers), preemption-safe."""
    flags = {"data.suite": suite, "data.data_root": data_root, "encoder.name": encoder,
             "encoder.mapanything.weights": weights, "precompute.store": store, "precompute.taps": taps, "precompute.shard": shard,
             "precompute.num_shards": num_shards, "precompute.batch_size": batch_size, "precompute.device": device,
             "precompute.overwrite": True if overwrite else None,
             "precompute.require_space": True if require_space else None}
    cfg = build_config(DEFAULTS, config, overrides, flags)

    from geo3d.core.preemption import PREEMPTED_EXIT_CODE
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
        print(f"precompute: stopped on {r.preempted_by}{dropped}; committed work is kept. Rerun the same command "
              f"to resume.", file=sys.stderr, flush=True)
        raise typer.Exit(PREEMPTED_EXIT_CODE)
    if not r.store_complete:
        print(f"precompute: {r.missing_shards} shard(s) are held by other live workers; they will commit them "
              f"(rerun this command if they were killed)", file=sys.stderr, flush=True)
