"""`geo3d verify-cache STORE`: exit 0 when clean, 1 when faults were found, 2 for usage errors.

Imports nothing heavy at module level (the `geo3d` CLI loads every verb module).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from geo3d.cliutil import handle_errors
from geo3d.errors import DataError, Geo3dError


@handle_errors
def verify_cache(
    store: Path = typer.Argument(..., help="Path of the features store to check.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the suite folders (else "
                                             "$GEO3D_DATA_ROOT, else the one recorded by the store's precompute "
                                             "run; the demo suite falls back to demo_data/)."),
    deep: bool = typer.Option(False, "--deep", help="Also re-decode every source frame and compare content ids."),
    recompute: int = typer.Option(0, "--recompute", metavar="K", min=0,
                                  help="Re-run the encoder on K random frames and compare with the store."),
    recompute_atol: Optional[float] = typer.Option(None, "--recompute-atol", help="Off-CPU recompute: max abs "
                                                   "difference tolerated (default: report it, never fail)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    mark_damaged: bool = typer.Option(False, "--mark-damaged", help="Un-commit shards with bad data so the next "
                                      "`geo3d precompute` redoes exactly those."),
    no_dataset: bool = typer.Option(False, "--no-dataset", help="Check the store alone (skip the dataset checks)."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing the --recompute frames."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """Prove a features store complete and true; name every bad frame."""
    from features_store.metadata import read_metadata
    from features_store.verify import verify_store

    if no_dataset and deep:
        raise Geo3dError("--deep compares against the dataset: drop --no-dataset or --deep")
    if not (store / "zarr.json").is_file():
        read_metadata(store)  # no store here: a usage error (exit 2) naming the path
    spec = _spec_or_none(store)
    data_root = data_root or _env_data_root() or _recorded_data_root(store)
    mixture = None if no_dataset or spec is None else _open_mixture(spec, data_root)
    recompute_fn = _recompute_fn(spec, data_root) if recompute and spec is not None else None
    report = verify_store(store, mixture=mixture, deep=deep, recompute=recompute_fn, recompute_frames=recompute,
                          seed=seed, recompute_atol=recompute_atol, progress=progress)
    marked = _mark(store, report) if mark_damaged else []
    if as_json:
        import json

        print(json.dumps({**report.to_dict(), "data_root": data_root and str(data_root), "marked_damaged": marked},
                         default=str))
    else:
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
    from features_store.metadata import SchemaTooNewError, read_metadata, spec_from_metadata
    from geo3d.errors import StoreError

    try:
        return spec_from_metadata(read_metadata(store))
    except SchemaTooNewError:
        raise
    except (StoreError, TypeError, ValueError):
        return None


def _env_data_root() -> Path | None:
    import os

    from geo3d.config import DATA_ROOT_ENV

    return Path(os.environ[DATA_ROOT_ENV]) if os.environ.get(DATA_ROOT_ENV) else None


# precompute saves each run's resolved config inside the store (precompute/run.py LOG_DIR); the newest one
# that names a data root is where the store's frames came from.
PRECOMPUTE_LOG_DIR = "precompute_logs"


def _recorded_data_root(store: Path) -> Path | None:
    from omegaconf import OmegaConf

    for cfg_file in sorted((store / PRECOMPUTE_LOG_DIR).glob("*.config.yaml"), reverse=True):
        try:
            root = OmegaConf.select(OmegaConf.load(cfg_file), "data.data_root", default=None)
        except Exception:  # an unreadable log is not a reason to fail verification
            continue
        if root and Path(root).is_dir():
            return Path(root)
    return None


def _open_mixture(spec: Any, data_root: Path | None) -> Any:
    from geo3d.data.mixture import LiberoMixture

    suite = spec.dataset.get("suite")
    if not suite:
        raise Geo3dError("the store records no dataset suite, so it cannot be checked against a dataset; "
                         "pass --no-dataset to check the store alone")
    try:
        return LiberoMixture(suite, data_root=data_root)
    except DataError as e:
        raise Geo3dError(f"cannot open the store's dataset (suite {suite!r}) to check it: {e}. Pass --data-root "
                         "DIR, or --no-dataset to check the store alone") from None


def _recompute_fn(spec: Any, data_root: Path | None) -> Any:
    try:
        from precompute.recompute import make_recompute_fn
    except ImportError as e:
        raise Geo3dError(f"--recompute needs the precompute package ({e}); install geo3d fully") from None
    return make_recompute_fn(spec, str(data_root) if data_root else None)


def _mark(store: Path, report: Any) -> list[int]:
    from features_store.store import FeatureStore

    shards = report.damaged_shards()
    if not shards:
        return []
    kinds = sorted({f.kind for f in report.faults if set(f.shards) & set(shards)})
    done = FeatureStore.open(store).mark_damaged(shards, reason="verify-cache: " + ", ".join(kinds))
    print(f"marked {len(done)} shard(s) damaged", file=sys.stderr)
    return done
