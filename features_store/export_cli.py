"""`geo3d export STORE --format hdf5|npy|pt --out PATH`: the cached tokens for trainers other than geo3d.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from geo3d.core.cliutil import handle_errors
from geo3d.core.storage_faults import StorageFault, storage_guard


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
    from geo3d.features_store.export import run_export

    try:
        with storage_guard("export", Path(out).absolute().parent, needed=lambda: _export_bytes(store, suite, frames),
                           safe=lambda: f"the store {store} (only read); no partial export is left (written to a "
                                        f"temp name, published only when verified)" + ("; the existing --out is kept"
                                                                                       if overwrite else "")):
            summary = run_export(store, fmt, out, suite=suite, frames=frames, allow_incomplete=allow_incomplete,
                                 overwrite=overwrite, progress=progress)
    except StorageFault as e:
        if fmt != "hdf5":
            raise
        # HDF5 cannot tear down a file whose flush failed (h5py 3 / HDF5 1.14 segfault at exit): the temp file
        # is already removed, so leave without interpreter teardown, keeping the message and the exit code.
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(e.exit_code)
    print(f"exported {summary['frames']} frames ({summary['encoder']} tokens, bf16 bit-exact) to "
          f"{summary['out']} as {summary['format']}; verified: {summary['verified']}")


def _export_bytes(store: Path, suite: Optional[str], frames: Optional[str]) -> int:
    """The selected frames' tokens + index (features_store/store_size.py)."""
    from geo3d.features_store.export import select_frames
    from geo3d.features_store.reader import FeatureReader
    from geo3d.features_store.store_size import payload_bytes

    reader = FeatureReader(store)
    n = len(select_frames(reader, suite, frames, True).frames)
    return payload_bytes(reader.spec, n)
