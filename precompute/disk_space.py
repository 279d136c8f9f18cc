"""Precompute and disk space: the free-space check at start and the storage-fault hooks of a precompute run.

The size estimate itself lives in geo3d.features_store.store_size (one formula, also used by `geo3d doctor`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from geo3d.core.errors import StoreError
from geo3d.core.storage_faults import free_bytes, human_bytes
from geo3d.features_store.store import committed_shards
from geo3d.features_store.store_size import remaining_bytes, spec_bytes


def space_report(spec: Any, committed: list[int], where: str | Path) -> tuple[int, int | None, int]:
    """(bytes still needed, bytes free at `where`, bytes of the complete store)."""
    return remaining_bytes(spec, committed), free_bytes(where), spec_bytes(spec)


def check_free_space(spec: Any, committed: list[int], where: str | Path, require: bool) -> None:
    """Warn (or, with `require`, refuse before any work) when the store will not fit in the free space."""
    need, free, total = space_report(spec, committed, where)
    if free is None or free >= need:
        return
    msg = (f"the store at {where} still needs ~{human_bytes(need)} ({len(committed)}/{spec.num_shards} shards "
           f"committed; complete store ~{human_bytes(total)}) but only {human_bytes(free)} is free there")
    if require:
        raise StoreError(f"{msg}; free space or choose another --store (refused because of --require-space)")
    print(f"precompute: warning: {msg}; the run will stop with a storage fault when the disk fills (pass "
          f"--require-space to refuse up front)", file=sys.stderr, flush=True)


def _committed(path: str | Path) -> list[int]:
    try:
        return committed_shards(Path(path))
    except (StoreError, OSError):  # the store was never created, or its directory vanished
        return []


def fault_hooks(spec: Any, path: str | Path) -> dict[str, Callable[[], Any]]:
    """storage_guard hooks: what the store still needs, and what is safe (the committed shards)."""

    def safe() -> str:
        done = _committed(path)
        frames = sum(min(spec.shard_frames, spec.frames - i * spec.shard_frames) for i in done)
        return (f"{len(done)} of {spec.num_shards} shards committed ({frames} of {spec.frames} frames) in {path}; "
                f"committed shards are never recomputed")

    return {"needed": lambda: remaining_bytes(spec, _committed(path)), "safe": safe}
