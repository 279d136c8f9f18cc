"""`geo3d doctor`: one line per finding with its fix; exit 0 only when everything the run needs is there,
1 otherwise, 2 for usage errors.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, handle_errors
from geo3d.core.errors import Geo3dError


@handle_errors
def doctor(
    suite: Optional[str] = typer.Option(None, "--suite", help="The run's suite (data.suite)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder holding the suite folders."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="tiny | mapanything (encoder.name)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="MapAnything weights dir."),
    store: Optional[str] = typer.Option(None, "--store", help="Features store path (existing or to be made)."),
    out: Optional[str] = typer.Option(None, "--out", help="Training run directory (checkpoint disk space)."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help="Checkpoint (or run) dir that eval/serve will load."),
    stage: str = typer.Option("all", "--stage", help="What the run does: all | precompute | train | eval."),
    gpu: bool = typer.Option(False, "--gpu", help="The run will use GPUs: CUDA, bf16 and GPU memory become "
                             "required (also implied by precompute.device=cuda* or train.mixed_precision=bf16)."),
    slurm: bool = typer.Option(False, "--slurm", help="The run is submitted with `geo3d submit`: SLURM required."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Check this machine, the models, the data and the disks for the run the same flags/config describe."""
    from geo3d.cli.doctor.findings import exit_code
    from geo3d.cli.doctor.run import STAGES, compose, render, run_checks

    if stage not in STAGES:
        raise Geo3dError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    flags = {"suite": suite, "data_root": data_root, "encoder": encoder, "weights": weights, "store": store,
             "out": out}
    plan = compose(config, overrides, flags, stage, ckpt, gpu, slurm)
    findings = run_checks(plan)
    code = exit_code(findings)
    if as_json:
        typer.echo(json.dumps({"ok": code == 0, "stage": stage, "findings": [f.to_dict() for f in findings]},
                              indent=2))
    else:
        typer.echo(render(findings))
        typer.echo("doctor: " + ("everything this run needs is there" if code == 0 else
                                 f"{sum(f.status == 'FAIL' for f in findings)} problem(s): fix the FAIL lines above"))
    raise typer.Exit(code)
