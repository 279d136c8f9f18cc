"""`geo3d train`: stage 2.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, handle_errors
from geo3d.core.preemption import exit_code_for, stopped_by  # after a signal, once the checkpoint is written
from geo3d.core.storage_faults import resume_command, storage_guard


@handle_errors
def train(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    compressor: Optional[str] = typer.Option(None, help="Geometry compressor: none | mean | pool | per_layer | "
                                                        "qformer (sets model.compressor.type)."),
    suite: Optional[str] = typer.Option(None, help="LIBERO suite: libero_spatial|object|goal|10|all|demo."),
    data_root: Optional[Path] = typer.Option(None, help="Folder holding the suite folders (else "
                                                        "$GEO3D_DATA_ROOT; demo falls back to demo_data/)."),
    store: Optional[Path] = typer.Option(None, help="Features store made by `geo3d precompute` for this suite."),
    tap: Optional[str] = typer.Option(None, help="Encoder tap the run asks for (train.tap): info_sharing | encoder "
                                                 "| info_sharing_<i>; a store of another tap is refused."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<train.run_name>)."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the run directory from its latest "
                                                        "checkpoint (starts fresh if it has none)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build the model on the meta device, print parameter "
                                                          "counts per module and the per-GPU memory estimate "
                                                          "(JSON on stdout, a table on stderr), and exit."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps to train for (train.max_steps)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (train.seed)."),
) -> None:
    """Train Qwen2.5-VL + geometry compressor + DiT action head on raw frames and cached geometry tokens.

    Exit codes: 0 done; 2 bad input (nothing trained); 74 storage fault (full disk, quota, I/O error: free
    space, then re-run with --resume); 75 preempted by SIGTERM/SIGUSR1 after saving a resume checkpoint
    (re-run the same command with --resume to continue); 130 Ctrl-C, after saving the same checkpoint (a
    second Ctrl-C stops at once).
    """
    from geo3d.train.run_config import DEMO_NOTE, compose_train_config, uses_demo_preset

    flags = {"compressor": compressor, "suite": suite, "data_root": str(data_root) if data_root else None,
             "store": str(store) if store else None, "tap": tap, "out": str(out) if out else None,
             "max_steps": max_steps, "seed": seed}
    cfg = compose_train_config(config, overrides, flags)
    if uses_demo_preset(list(config or []), flags):
        typer.echo(DEMO_NOTE, err=True)  # the mode switch, explicit
    if dry_run:
        from geo3d.train.launch import dry_run as build_dry_run
        report = build_dry_run(cfg)
        memory = report.pop("memory")
        typer.echo(json.dumps({**report, "memory": memory.as_dict()}, indent=2))
        typer.echo("per-GPU training memory (estimate):\n" + memory.render(), err=True)
        return
    from geo3d.train.disk_space import fault_hooks
    from geo3d.train.launch import run_training
    from geo3d.train.run_config import run_dir_of
    with storage_guard("train", run_dir_of(cfg), resume=resume_command(add=("--resume",)), **fault_hooks(cfg)):
        result = run_training(cfg, resume)
    stopped = result.preempted_by is not None
    if not result.is_main:
        raise typer.Exit(exit_code_for(result.preempted_by) if stopped else 0)
    if stopped:
        code = exit_code_for(result.preempted_by)
        typer.echo(f"{stopped_by(result.preempted_by)} at step {result.step}; saved {result.last_checkpoint}; "
                   f"re-run the same command with --resume to continue (exit {code})", err=True)
        raise typer.Exit(code)
    typer.echo(f"done: step {result.step}, checkpoint {result.last_checkpoint}")
