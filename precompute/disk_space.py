"""Precompute and disk space: the free-space check at start and the storage-fault hooks of a precompute run.

The size estimate itself lives in geo3d.features_store.store_size (one formula, also used by `geo3d doctor`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from geo3d.core.errors import StoreError
from geo3d.core.storage_faults import free_bytes, human_bytes
from geo3d.features_store.store import committed_shards
from geo3d.features_store.store_size import remaining_bytes, spec_bytes


def space_report(stores: Mapping[Path, Any], where: str | Path) -> tuple[int, int | None, int]:
    """(bytes still needed by every store of the pass, bytes free at `where`, bytes of the complete stores).
    `stores` maps each store path to its spec; the tap stores of one pass sit side by side (one filesystem)."""
    need = sum(remaining_bytes(spec, _committed(path)) for path, spec in stores.items())
    return need, free_bytes(where), sum(spec_bytes(spec) for spec in stores.values())


def check_free_space(stores: Mapping[Path, Any], where: str | Path, require: bool) -> None:
    """Warn (or, with `require`, refuse before any work) when the stores will not fit in the free space."""
    need, free, total = space_report(stores, where)
    if free is None or free >= need:
        return
    done = " + ".join(f"{len(_committed(p))}/{spec.num_shards}" for p, spec in stores.items())
    what = f"the store at {where} still needs" if len(stores) == 1 else \
        f"the {len(stores)} tap stores beside {where} still need"
    msg = (f"{what} ~{human_bytes(need)} ({done} shards committed; complete store{'s' if len(stores) > 1 else ''} "
           f"~{human_bytes(total)}) but only {human_bytes(free)} is free there")
    if require:
        raise StoreError(f"{msg}; free space or choose another --store (refused because of --require-space)")
    print(f"precompute: warning: {msg}; the run will stop with a storage fault when the disk fills (pass "
          f"--require-space to refuse up front)", file=sys.stderr, flush=True)


def _committed(path: str | Path) -> list[int]:
    try:
        return committed_shards(Path(path))
    except (StoreError, OSError):  # the store was never created, or its directory vanished
        return []


def fault_hooks(stores: Mapping[Path, Any]) -> dict[str, Callable[[], Any]]:
    """storage_guard hooks: what the stores still need, and what is safe (the committed shards)."""

    def safe() -> str:
        parts = []
        for path, spec in stores.items():
            done = _committed(path)
            frames = sum(min(spec.shard_frames, spec.frames - i * spec.shard_frames) for i in done)
            parts.append(f"{len(done)} of {spec.num_shards} shards committed ({frames} of {spec.frames} frames) "
                         f"in {path}")
        return "; ".join(parts) + "; committed shards are never recomputed"

    return {"needed": lambda: sum(remaining_bytes(spec, _committed(p)) for p, spec in stores.items()), "safe": safe}
