"""`geo3d demo`: stage 1 -> verify -> stage 2 on the embedded demo dataset, end to end.

Each step runs as its own `geo3d` subprocess, exactly as a user (or a SLURM job) would run it, so the
training process never has the encoder in memory and every step's own config/provenance files are written.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from geo3d.core.cliutil import handle_errors
from geo3d.core.errors import Geo3dError


def _run_step(title: str, args: list[str], log_dir: Path) -> float:
    """Run one `geo3d` verb, streaming its output to the terminal and to `log_dir/<title>.log`."""
    # -P (Python >= 3.11): the working directory is not put on sys.path, so no user file there shadows geo3d
    cmd = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "geo3d.cli", *args]
    print(f"\n=== {title}: geo3d {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    log_path = log_dir / f"{title}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        raise Geo3dError(f"demo step '{title}' failed with exit code {code}; its log: {log_path}")
    return time.perf_counter() - start


@handle_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the store, run and logs go."),
    compressor: str = typer.Option("qformer", "--compressor", help="none | mean | pool | per_layer | qformer"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps (default: configs/train/demo.yaml)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild OUT/store.zarr instead of reusing it."),
    closed_loop: bool = typer.Option(False, "--eval", help="Train longer (configs/train/demo_eval.yaml), evaluate in "
                                     "the LIBERO simulator from the training scenes, then `geo3d report` (cli/demo_eval.py)."),
) -> None:
    """Run stage 1 (tiny encoder) -> verify-cache -> stage 2 (tiny Qwen2.5-VL + compressor + DiT) on `demo`."""
    from geo3d.data.suites import DEMO_DATA_ROOT  # here, not at import: every `geo3d` command loads this module

    out = out.resolve()
    # Rerunning the demo reuses OUT's store (precompute skips committed shards, verify proves it again) and
    # trains a new run beside the earlier ones: nothing of an earlier demo is overwritten.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    store, run_dir, logs = out / "store.zarr", out / f"train_{compressor}_{stamp}", out / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    # The shipped dataset, named explicitly so a GEO3D_DATA_ROOT set for real data cannot redirect the demo.
    data = ["--suite", "demo", "--data-root", str(DEMO_DATA_ROOT)]
    precompute = ["precompute", *data, "--encoder", "tiny", "--store", str(store)]
    train = ["train", "--compressor", compressor, *data, "--store", str(store), "--out", str(run_dir),
             "--config", "train/demo"]
    if closed_loop:
        from geo3d.cli.demo_eval import TRAIN_CONFIG

        train += ["--config", TRAIN_CONFIG]
    if overwrite:
        precompute.append("--overwrite")
    if max_steps is not None:
        train += ["--max-steps", str(max_steps)]
    timings = {
        "precompute": _run_step("precompute", precompute, logs),
        "verify": _run_step("verify", ["verify-cache", str(store), "--data-root", str(DEMO_DATA_ROOT)], logs),
        "train": _run_step("train", train, logs),
    }
    if closed_loop:
        from geo3d.cli.demo_eval import closed_loop as run_closed_loop

        timings.update(run_closed_loop(_run_step, DEMO_DATA_ROOT, run_dir, logs))
    summary = {"store": str(store), "run_dir": str(run_dir), "logs": str(logs),
               "seconds": {k: round(v, 1) for k, v in timings.items()},
               "checkpoints": sorted(str(p) for p in (p.parent for p in run_dir.glob("checkpoints/steps_*/checkpoint.json")))}
    (logs / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print("\n=== demo finished")
    print(f"  features store : {store}  (verified)")
    print(f"  training run   : {run_dir}  (metrics.jsonl, resolved_config.yaml, checkpoints)")
    for ckpt in summary["checkpoints"]:
        print(f"  checkpoint     : {ckpt}")
    print(f"  step logs      : {logs}")
    print(f"  timings (s)    : {summary['seconds']}")
    print(f"  summary        : {logs / 'demo_summary.json'}")
    if closed_loop:
        print(f"  report         : {run_dir / 'report' / 'report.png'}  (loss curves + success table)")
