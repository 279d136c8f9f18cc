"""Exclusive leases on a lock file: `fcntl.flock`, plus an owner record (host, pid, process start, boot id).

Why flock: the kernel drops the lock when the holder dies (even kill -9 or an OOM kill), so a crashed job never
leaves a stale claim that needs manual cleanup, unlike "lock file exists" schemes. Used by the features store
(one writer per shard, features_store/leases.py) and by `geo3d train` (one process tree per run directory).

Filesystem caveats (document for cluster users):
- Local disks, ext4/xfs, and NFSv4 (flock is mapped to byte-range locks since Linux 2.6.12) work across
  hosts. On NFSv3 locking needs the NLM lock daemon (`lockd`); mounts with `nolock`/`local_lock=all` make
  locks host-local, so two hosts could both hold one lease.
- Lustre: mount with `-o flock` for cluster-coherent locks; `localflock` is host-local only and the
  default (`noflock`) makes flock fail with ENOSYS, reported as LockUnsupported.
- A lock is held per open file description: a child forked while holding a lease shares it.
- A lock that outlives its holder (a node that died while an NFS/Lustre server still records its lock) can be
  broken only when the owner recorded in the lock file is provably gone (`owner_gone`). Breaking unlinks the
  lock file; the next claimant locks a fresh file, and one that opened the old file just before is refused by
  the inode check in `try_lock`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from geo3d.core.errors import Geo3dError
from geo3d.core.provenance import utc_now


class LockUnsupported(Geo3dError):
    """The filesystem refuses flock (Lustre without -o flock, NFS without lockd)."""


class FileLease:
    """A held lock on `path`. Use as a context manager (or call `release()`); released on process death."""

    def __init__(self, path: Path, fd: int, on_release: Callable[[Any], None] | None = None) -> None:
        self.path, self._fd, self._on_release = Path(path), fd, on_release

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            if self._on_release is not None:
                self._on_release(self)

    def __enter__(self) -> "FileLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lease must not keep the lock for the process lifetime
        try:
            self.release()
        except Exception:
            pass


L = TypeVar("L", bound=FileLease)


def try_lock(path: Path, make: Callable[[Path, int], L] = FileLease) -> L | None:  # type: ignore[assignment]
    """Take the exclusive lock on `path` without waiting and record this process as its owner; None when
    another holder has it. `make(path, fd)` builds the lease object (e.g. a store's ShardLease)."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise LockUnsupported(f"cannot lock {path}: {e}. The filesystem does not support flock (on Lustre mount "
                              "with -o flock; on NFS enable lockd); use a filesystem with working locks") from e
    if not still_linked(fd, path):  # the lock file was broken (unlinked) while we opened it: lost race
        os.close(fd)
        return None
    os.ftruncate(fd, 0)  # who holds it: for humans, and for breaking a lease only when this owner is gone
    os.pwrite(fd, json.dumps(owner_record()).encode(), 0)
    return make(Path(path), fd)


def owner_record() -> dict[str, Any]:
    """host, pid, the process's start time (pid reuse) and boot id (reboots), the claim time (UTC and epoch)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "boot_id": boot_id(), "claimed_utc": utc_now(), "claimed_unix": time.time()}


def read_owner(lock: Path) -> dict[str, Any] | None:
    """The owner record in a lock file (None if absent or unreadable)."""
    try:
        text = Path(lock).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe_owner(owner: dict[str, Any] | None) -> str:
    """`pid 123 on host h since <UTC>` (or a note that no owner was recorded)."""
    if not owner:
        return "an unknown process (no owner recorded)"
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('claimed_utc', '?')}"


def owner_gone(owner: dict[str, Any] | None, force: bool, older_than_s: float,
               now: float | None = None) -> tuple[bool, str]:
    """(is the owner provably gone, why): same host -> its pid is dead, reused, or the host rebooted; another
    host -> only with `force` and a claim older than `older_than_s` (geo3d cannot see that host's processes)."""
    if not owner or "host" not in owner:
        return force, "no owner recorded (a lease from an older geo3d)" + ("; forced" if force else ": pass --force")
    host, pid = owner["host"], owner.get("pid")
    if host == socket.gethostname():
        if owner.get("boot_id") and boot_id() and owner["boot_id"] != boot_id():
            return True, f"{host} rebooted since the claim"
        start = process_start(int(pid)) if pid is not None else None
        if start is None:
            return True, f"pid {pid} is not running on {host}"
        if owner.get("pid_start") is not None and start != owner["pid_start"]:
            return True, f"pid {pid} on {host} is now another process"
        return False, f"pid {pid} is alive on this host: a live writer; stop it instead"
    age = (now or time.time()) - float(owner.get("claimed_unix", 0.0))
    hours = age / 3600
    if not force:
        return False, (f"held by pid {pid} on another host {host} for {hours:.1f} h; geo3d cannot see that host: if "
                       f"it is dead, pass --force (with --older-than-hours)")
    if age < older_than_s:
        return False, f"held by {host} for only {hours:.1f} h (< {older_than_s / 3600:.1f} h): refusing even with --force"
    return True, f"held by {host} for {hours:.1f} h (>= {older_than_s / 3600:.1f} h) and --force given"


def process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22); None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def still_linked(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def lock_scope_problem(path: str | Path, mounts_text: str | None = None) -> str | None:
    """Why flock on `path` might not exclude holders on OTHER hosts (None if nothing is known to be wrong).

    Reads the mount options of the filesystem holding `path` (/proc/mounts, Linux only).
    """
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[str, str, set[str]] | None = None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) > len(best[0])):
            best = (mnt, parts[2], set(parts[3].split(",")))
    if best is None:
        return None
    mnt, fstype, opts = best
    if fstype.startswith("nfs") and ({"nolock", "local_lock=all", "local_lock=flock"} & opts):
        return (f"{mnt} is NFS mounted with {sorted({'nolock', 'local_lock=all', 'local_lock=flock'} & opts)}: "
                "locks are host-local, so processes on different hosts could hold the same lease")
    if fstype == "lustre" and "flock" not in opts:
        how = "localflock (host-local locks)" if "localflock" in opts else "no flock option (locks fail)"
        return (f"{mnt} is Lustre mounted with {how}: run all workers on one host or remount with -o flock")
    return None
