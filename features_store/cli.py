"""`geo3d verify-cache STORE`: exit 0 when clean, 1 when faults were found, 2 for usage errors.

Composed from plain parts: the store (features_store.verify), the dataset it was made from (geo3d.data) and,
for --recompute, the encoder its identity records (geo3d.encoders) — all layers below the store's verb.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from geo3d.core.cliutil import handle_errors
from geo3d.core.config import DATA_ROOT_ENV
from geo3d.core.errors import DataError, Geo3dError, StoreError
from geo3d.core.taps import refuse_other_tap
from geo3d.features_store.metadata import (SchemaTooNewError, read_metadata, recorded_data_root,
                                           spec_from_metadata)


@handle_errors
def verify_cache(
    store: Path = typer.Argument(..., help="Path of the features store to check.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the suite folders (else "
                                             "$GEO3D_DATA_ROOT, else the one recorded by the store's precompute "
                                             "run; the demo suite falls back to demo_data/)."),
    deep: bool = typer.Option(False, "--deep", help="Also re-decode every source frame and compare content ids."),
    recompute: int = typer.Option(0, "--recompute", metavar="K", min=0,
                                  help="Re-run the encoder on K random frames and compare with the store."),
    recompute_atol: Optional[float] = typer.Option(None, "--recompute-atol", help="Where bit-exact is not "
                                                   "meaningful (another device type or kernel runtime): max abs "
                                                   "difference tolerated per frame (default: "
                                                   "DEFAULT_RECOMPUTE_ATOL in features_store/tolerance.py; the "
                                                   "report states the rule used and why; 'inf' = report only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    mark_damaged: bool = typer.Option(False, "--mark-damaged", help="Un-commit shards with bad data so the next "
                                      "`geo3d precompute` redoes exactly those."),
    no_dataset: bool = typer.Option(False, "--no-dataset", help="Check the store alone (skip the dataset checks)."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the --recompute frames."),
    tap: Optional[str] = typer.Option(None, "--tap", help="Refuse the store unless it holds this encoder tap's "
                                      "tokens (info_sharing | encoder | info_sharing_<layer>): what a run asks for."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """Prove a features store complete and true; name every bad frame."""
    from geo3d.encoders.recompute import make_recompute_fn  # torch
    from geo3d.features_store.verify import verify_store  # zarr

    if recompute_atol is not None and not recompute_atol >= 0:  # also refuses nan
        raise Geo3dError(f"--recompute-atol must be a number >= 0 (or inf), got {recompute_atol}")
    if no_dataset and deep:
        raise Geo3dError("--deep compares against the dataset: drop --no-dataset or --deep")
    if not (store / "zarr.json").is_file():
        read_metadata(store)  # no store here: a usage error (exit 2) naming the path
    spec = _spec_or_none(store)
    if tap is not None and spec is not None:
        refuse_other_tap(spec.tap, tap, store, "--tap", use="run `geo3d verify-cache {}`")  # STORE: positional
    data_root = data_root or _env_data_root() or recorded_data_root(store)
    mixture = None if no_dataset or spec is None else _open_mixture(spec, data_root)
    recompute_fn = make_recompute_fn(spec, str(data_root) if data_root else None) if recompute and spec is not None else None
    report = verify_store(store, mixture=mixture, deep=deep, recompute=recompute_fn, recompute_frames=recompute,
                          seed=seed, recompute_atol=recompute_atol, progress=progress)
    marked = _mark(store, report) if mark_damaged else []
    if as_json:
        print(json.dumps({**report.to_dict(), "tap": spec and spec.tap, "data_root": data_root and str(data_root),
                          "marked_damaged": marked}, default=str))
    else:
        if spec is not None:
            print(f"tap: {spec.tap} ({spec.encoder.get('config', {}).get('layer', '?')})")
        if mixture is not None:
            print(f"dataset: {spec.dataset.get('suite')} from {data_root or 'the default location'}")
        print(report.summary())
        if marked:
            print(f"marked damaged (un-committed): shards {marked}; run `geo3d precompute` to redo them")
    if not report.ok:
        raise typer.Exit(1)


def _spec_or_none(store: Path) -> Any:
    """The spec, or None when the metadata is damaged (verify_store then reports it as a fault, exit 1).
    A store from a newer geo3d is a usage error (exit 2): upgrade."""
    try:
        return spec_from_metadata(read_metadata(store))
    except SchemaTooNewError:
        raise
    except (StoreError, TypeError, ValueError):
        return None


def _env_data_root() -> Path | None:
    return Path(os.environ[DATA_ROOT_ENV]) if os.environ.get(DATA_ROOT_ENV) else None


def _open_mixture(spec: Any, data_root: Path | None) -> Any:
    suite = spec.dataset.get("suite")
    if not suite:
        raise Geo3dError("the store records no dataset suite, so it cannot be checked against a dataset; "
                         "pass --no-dataset to check the store alone")
    from geo3d.data.mixture import LiberoMixture  # pyarrow, av

    try:
        return LiberoMixture(suite, data_root=data_root).validate_files()  # the check precompute and train run
    except DataError as e:
        raise Geo3dError(f"cannot check the store against its dataset (suite {suite!r}): {e}. Fix the dataset or "
                         "pass --data-root DIR, or --no-dataset to check the store alone") from None


def _mark(store: Path, report: Any) -> list[int]:
    from geo3d.features_store.store import FeatureStore

    shards = report.damaged_shards()
    if not shards:
        return []
    kinds = sorted({f.kind for f in report.faults if set(f.shards) & set(shards)})
    done = FeatureStore.open(store).mark_damaged(shards, reason="verify-cache: " + ", ".join(kinds))
    print(f"marked {len(done)} shard(s) damaged", file=sys.stderr)
    return done
