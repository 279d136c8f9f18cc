"""One writer per shard: the store's use of geo3d.core.lease (an exclusive, non-blocking flock on a per-shard lock
file, with an owner record). The mechanism and its filesystem caveats are documented there; a lock that outlives
its owner is broken with `geo3d leases STORE --break` (features_store/stale_leases.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from geo3d.core import lease as core_lease
from geo3d.core.errors import StoreError
from geo3d.core.lease import FileLease, boot_id, lock_scope_problem, owner_record, process_start, still_linked

__all__ = ["ShardLease", "try_lock", "lock_scope_problem", "owner_record", "process_start", "boot_id"]
_still_linked = still_linked  # the name the stale-lease tests use


class ShardLease(FileLease):
    """A held claim on one shard. Use as a context manager (or call `release()`); released on process death."""

    def __init__(self, path: Path, shard: int, fd: int, on_release: Callable[[Any], None] | None = None) -> None:
        super().__init__(path, fd, on_release)
        self.shard = shard

    def __repr__(self) -> str:
        return f"ShardLease(shard={self.shard}, held={self.held})"


def try_lock(path: Path, shard: int, on_release: Callable[[Any], None] | None = None) -> ShardLease | None:
    """Take shard `shard`'s lock without waiting; None when another writer has it."""
    try:
        return core_lease.try_lock(path, lambda p, fd: ShardLease(p, shard, fd, on_release))
    except core_lease.LockUnsupported as e:
        raise StoreError(f"{e} (put the store there)") from e
