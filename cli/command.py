"""The `geo3d` command. Each package owns its verb; this file only assembles them.

`main` (the console script and `python -m geo3d.cli`) imports only the invoked verb's module, so a training
process never loads anything of stage 1 (tests/test_train_cli.py checks it); `--help` lists every verb, so it
imports every verb module: those import their stage inside the verb function (measured here, 2-core Xeon:
`geo3d --help` 0.4 s; with the stages imported at the top of the verb modules, torch, transformers and zarr
come along: ~10 s). Every other module imports at its top.
To add a verb: one row in VERBS.
"""

from __future__ import annotations

import importlib
import sys
from typing import Iterable, Sequence

import typer

# (verb, module, attribute, help): the attribute is a command function or a typer.Typer (a verb group).
VERBS = (
    ("precompute", "geo3d.precompute.cli", "precompute",
     "Stage 1: encode every frame with the frozen encoder into a Zarr store."),
    ("verify-cache", "geo3d.features_store.cli", "verify_cache",
     "Prove a features store complete and true (exit 0 clean, 1 faults, 2 usage)."),
    ("leases", "geo3d.features_store.lease_cli", "leases",
     "List shard leases and their owners; --break frees those whose owner is gone."),
    ("export", "geo3d.features_store.export_cli", "export_cmd",
     "Export cached tokens + index + metadata as hdf5|npy|pt, verified bit for bit."),
    ("train", "geo3d.train.cli", "train",
     "Stage 2: train Qwen2.5-VL + geometry compressor + DiT head on cached tokens."),
    ("serve", "geo3d.evaluation.cli", "serve_cmd", "Serve a checkpoint to geo3d / StarVLA / openpi LIBERO clients (websocket, msgpack + numpy)."),
    ("eval", "geo3d.evaluation.cli", "eval_cmd", "Evaluate a checkpoint in the LIBERO simulator."),
    ("replay", "geo3d.evaluation.cli", "replay_cmd",
     "Replay dataset episodes in the simulator under eval's protocol: do they reproduce?"),
    ("report", "geo3d.evaluation.cli", "report_cmd",
     "Compare runs: loss curves, compressor grad norms, geometry attention, success."),
    ("doctor", "geo3d.cli.doctor.cli", "doctor",
     "Before any GPU hour: what will fail for this run (exit 0 ready, 1 problems, 2 usage)."),
    ("demo", "geo3d.cli.demo", "demo", "Run stage 1 -> verify -> stage 2 end to end on the embedded demo dataset."),
    ("inspect", "geo3d.cli.inspection.cli", "inspect_cmd",
     "Write exactly what the VLM and geometry encoder receive for one frame (dataset or sim)."),
    ("submit", "geo3d.cli.submit", "submit_app", "Render sbatch scripts and submit them to SLURM."),
)


def build_app(verbs: Iterable[str] | None = None) -> typer.Typer:
    """The command with every verb, or only `verbs` (their modules are the only ones imported)."""
    wanted = set(verbs) if verbs is not None else None
    app = typer.Typer(
        name="geo3d",
        help="Cache frozen MapAnything geometry tokens once (stage 1), train VLA policies on them (stage 2).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_group)  # a group even when only one verb is registered (typer would collapse it)
    for name, module, attr, help_text in VERBS:
        if wanted is not None and name not in wanted:
            continue
        fn = getattr(importlib.import_module(module), attr)
        if isinstance(fn, typer.Typer):
            app.add_typer(fn, name=name, help=help_text)
        else:
            app.command(name, help=help_text)(fn)
    return app


def _group() -> None:
    """The verbs' parent command: no options of its own."""


def main(args: Sequence[str] | None = None) -> None:
    """Run `geo3d ARGS` (default: sys.argv), building only the invoked verb when one is named."""
    argv = list(sys.argv[1:] if args is None else args)
    names = {v[0] for v in VERBS}
    verb = argv[0] if argv and argv[0] in names else None
    build_app([verb] if verb else None)(argv, prog_name="geo3d")


if __name__ == "__main__":
    main()
