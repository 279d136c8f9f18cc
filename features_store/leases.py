"""Shard leases: one writer per shard, and breaking a lease whose owner is provably gone.

One writer per shard is the store's use of geo3d.core.lease (an exclusive, non-blocking flock on a per-shard lock
file, with an owner record). On a local disk or a healthy NFSv4/Lustre(-o flock) mount the kernel/server drops a
dead writer's flock, so a held lock means a live writer. It can outlive its owner when a node dies and the lock
server keeps its lock (NFSv4 until the lease period expires, longer with a hung server; Lustre until the client is
evicted). Then `geo3d leases STORE --break`:

- same host (hostname and boot id match): the recorded pid is dead, or a different process now has that pid
  (start time differs)  -> the owner is gone, the lease may be broken;
- same hostname, another boot id: the host rebooted since the claim -> gone;
- another host: geo3d cannot see its processes, so only with `force` and when the claim is older than
  `older_than_s` (pick a threshold longer than any shard write: minutes on a GPU).

Breaking unlinks the lock file (the old holder, if it is somehow alive, keeps a lock on an orphaned inode);
`try_lock` re-checks the inode after locking, so no new claimant can hold the orphan.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from geo3d.core import lease as core_lease
from geo3d.core.errors import StoreError
from geo3d.core.lease import (
    FileLease,
    boot_id,
    lock_scope_problem,
    owner_gone,
    owner_record,
    process_start,
    read_owner,
    still_linked,
)
from geo3d.features_store import array_layout as L

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


# -- stale shard leases (geo3d leases STORE [--break]) -------------------------------------------------------------
@dataclass
class LeaseStatus:
    shard: int
    lock: str
    held: bool
    owner: dict[str, Any] | None
    gone: bool  # the owner is provably gone (or forced): breaking is safe
    reason: str
    broken: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lease_statuses(store: str | Path, shards: list[int] | None = None, force: bool = False,
                   older_than_s: float = 24 * 3600) -> list[LeaseStatus]:
    """One status per existing lock file (all, or `shards`). Probing takes and drops a free lock at once."""
    out = []
    for lock in sorted((Path(store) / L.LOCKS).glob("shard-*.lock")):
        shard = int(lock.name[6:12])
        if shards is not None and shard not in shards:
            continue
        owner = read_owner(lock)  # before probing: a successful probe records itself as the owner
        lease = try_lock(lock, shard)
        if lease is not None:  # free: the kernel/server already released it
            lease.release()
            out.append(LeaseStatus(shard, str(lock), False, owner, False, "free"))
            continue
        gone, why = owner_gone(owner, force, older_than_s)
        out.append(LeaseStatus(shard, str(lock), True, owner, gone, why))
    return out


def break_stale(statuses: list[LeaseStatus]) -> list[LeaseStatus]:
    """Unlink the lock file of every held lease whose owner is gone; returns the statuses (broken marked)."""
    for s in statuses:
        if s.held and s.gone:
            try:
                os.unlink(s.lock)
            except FileNotFoundError:
                pass
            s.broken = True
    return statuses
