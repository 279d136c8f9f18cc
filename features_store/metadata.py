"""The store's self-describing metadata (root group attributes) and the schema-version gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from geo3d import __version__
from geo3d.core.errors import StoreError
from geo3d.core.provenance import provenance, utc_now
from geo3d.features_store.spec import CHECKSUM_ALGO, DTYPE, META_KEY, SCHEMA_VERSION, STORAGE_DTYPE, StoreSpec


class SchemaTooNewError(StoreError):
    """The store was written by a newer geo3d: a usage problem (upgrade), not damage."""


def build_metadata(spec: StoreSpec) -> dict[str, Any]:
    """Everything needed to interpret the store without geo3d's code at hand, plus how it was made."""
    return {
        "schema_version": SCHEMA_VERSION,
        "dtype": DTYPE,
        "storage_dtype": STORAGE_DTYPE,
        "shape": [spec.frames, *spec.frame_shape],
        "checksum": CHECKSUM_ALGO,
        "spec": spec.to_dict(),
        "tool_version": __version__,
        "created_utc": utc_now(),
        "provenance": provenance(),
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and validate the geo3d metadata of a store; clear errors for 'not a store' and 'too new'."""
    path = Path(path)
    zjson = path / "zarr.json"
    if not path.exists():
        raise StoreError(f"no features store at {path}: the path does not exist (run `geo3d precompute` first)")
    try:
        root = json.loads(zjson.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is not a features store: {zjson} is missing") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read store metadata {zjson}: {e}") from e
    meta = root.get("attributes", {}).get(META_KEY)
    if not isinstance(meta, dict):
        raise StoreError(f"{path} is a zarr store but not a geo3d features store (no '{META_KEY}' attributes)")
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise StoreError(f"store {path}: metadata has no integer schema_version; the store is damaged")
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(f"store {path} has schema version {version}, newer than this geo3d understands "
                         f"({SCHEMA_VERSION}); upgrade geo3d (store written by tool {meta.get('tool_version')})")
    if meta.get("dtype") != DTYPE or meta.get("storage_dtype") != STORAGE_DTYPE:
        raise StoreError(f"store {path}: unsupported dtype {meta.get('dtype')}/{meta.get('storage_dtype')}")
    return meta


def spec_from_metadata(meta: dict[str, Any]) -> StoreSpec:
    try:
        return StoreSpec.from_dict(meta["spec"])
    except (KeyError, TypeError) as e:
        raise StoreError(f"store metadata has a malformed spec ({e}); the store is damaged") from e


PRECOMPUTE_LOG_DIR = "precompute_logs"  # inside the store: each precompute run's resolved config and shard log


def recorded_data_root(store_path: Path) -> Path | None:
    """The data root the store's frames came from: the newest resolved config in the store's precompute logs
    that names an existing one (verify-cache's default when no --data-root is given)."""
    for cfg_file in sorted((Path(store_path) / PRECOMPUTE_LOG_DIR).glob("*.config.yaml"), reverse=True):
        try:
            root = OmegaConf.select(OmegaConf.load(cfg_file), "data.data_root", default=None)
        except Exception:  # an unreadable log is not a reason to fail verification
            continue
        if root and Path(root).is_dir():
            return Path(root)
    return None
