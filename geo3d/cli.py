"""The `geo3d` command. Each package owns its verb; this file only assembles them.

Verb modules import nothing heavy at module level, so `geo3d train` never imports the geometry encoder.
"""

from __future__ import annotations

import typer

from evaluation.cli import eval_cmd, replay_cmd, report_cmd, serve_cmd
from features_store.cli import verify_cache
from features_store.lease_cli import leases
from features_store.export_cli import export_cmd
from geo3d.demo import demo
from geo3d.inspection.cli import inspect_cmd
from geo3d.doctor.cli import doctor
from geo3d.submit import submit_app
from precompute.cli import precompute
from train.cli import train

app = typer.Typer(
    name="geo3d",
    help="Cache frozen MapAnything geometry tokens once (stage 1), train VLA policies on them (stage 2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("precompute", help="Stage 1: encode every frame with the frozen encoder into a Zarr store.")(precompute)
app.command("verify-cache", help="Prove a features store complete and true (exit 0 clean, 1 faults, 2 usage).")(
    verify_cache)
app.command("leases", help="List shard leases and their owners; --break frees those whose owner is gone.")(leases)
app.command("export", help="Export cached tokens + index + metadata as hdf5|npy|pt, verified bit for bit.")(
    export_cmd)
app.command("train", help="Stage 2: train Qwen2.5-VL + geometry compressor + DiT head on cached tokens.")(train)
app.command("serve", help="Serve a checkpoint as a websocket policy (msgpack + numpy).")(serve_cmd)
app.command("eval", help="Evaluate a checkpoint in the LIBERO simulator.")(eval_cmd)
app.command("replay", help="Replay dataset episodes in the simulator under eval's protocol: do they reproduce?")(
    replay_cmd)
app.command("report", help="Compare runs: loss curves, compressor grad norms, geometry attention, success.")(
    report_cmd)
app.command("doctor", help="Before any GPU hour: what will fail for this run (exit 0 ready, 1 problems, 2 usage).")(
    doctor)
app.command("demo", help="Run stage 1 -> verify -> stage 2 end to end on the embedded demo dataset.")(demo)
app.command("inspect", help="Write exactly what the VLM and geometry encoder receive for one frame (dataset or sim).")(
    inspect_cmd)
app.add_typer(submit_app, name="submit", help="Render sbatch scripts and submit them to SLURM.")

if __name__ == "__main__":
    app()
