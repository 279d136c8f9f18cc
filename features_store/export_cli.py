"""`geo3d export STORE --format hdf5|npy|pt --out PATH`: the cached tokens for trainers other than geo3d.

Imports nothing heavy at module level (the `geo3d` CLI loads every verb module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geo3d.cliutil import handle_errors


@handle_errors
def export_cmd(
    store: Path = typer.Argument(..., help="Path of the features store to export.", show_default=False),
    fmt: str = typer.Option(..., "--format", help="hdf5 (one file) | npy (a folder of .npy) | pt (a folder of "
                            "torch files, one per store shard). Layouts: features_store/README.md."),
    out: Path = typer.Option(..., "--out", help="Output file (hdf5) or folder (npy, pt); must not exist."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Only the frames of this suite of the store's "
                                        "mixture (e.g. libero_object)."),
    frames: Optional[str] = typer.Option(None, "--frames", metavar="START:STOP",
                                         help="Only this range of global frame indices."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete", help="Export the committed frames of an "
                                          "incomplete store (the index says which) instead of refusing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out (only after the new "
                                   "export is written and verified)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Export cached tokens + per-frame index + store metadata, verified bit for bit."""
    from features_store.export import run_export

    summary = run_export(store, fmt, out, suite=suite, frames=frames, allow_incomplete=allow_incomplete,
                         overwrite=overwrite, progress=progress)
    print(f"exported {summary['frames']} frames ({summary['encoder']} tokens, bf16 bit-exact) to "
          f"{summary['out']} as {summary['format']}; verified: {summary['verified']}")
