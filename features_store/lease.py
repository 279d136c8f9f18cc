"""One writer per shard: an exclusive, non-blocking `fcntl.flock` on a per-shard lock file.

Why flock: the kernel drops the lock when the holder dies (even kill -9 or an OOM kill), so a crashed
SLURM task never leaves a stale claim that needs manual cleanup, unlike "lock file exists" schemes.

Filesystem caveats (document for cluster users):
- Local disks, ext4/xfs, and NFSv4 (flock is mapped to byte-range locks since Linux 2.6.12) work across
  hosts. On NFSv3 locking needs the NLM lock daemon (`lockd`); mounts with `nolock`/`local_lock=all` make
  locks host-local, so two hosts could both "own" a shard.
- Lustre: mount with `-o flock` for cluster-coherent locks; `localflock` is host-local only and the
  default (`noflock`) makes flock fail with ENOSYS, which we report as a StoreError.
- A lock is held per open file description: a child forked while holding a lease shares it.
- A lock that outlives its holder (a node that died while an NFS/Lustre server still records its lock) is
  broken with `geo3d leases STORE --break` (features_store/stale_leases.py): only when the owner recorded in
  the lock file is provably gone (same host: its pid is dead; other host: --force and older than a threshold).
  Breaking unlinks the lock file; the next claimant locks a fresh file, and a claimant that opened the old
  file just before is refused by the inode check below.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from geo3d.core.errors import StoreError


class ShardLease:
    """A held claim on one shard. Use as a context manager (or call `release()`); released on process death."""

    def __init__(self, path: Path, shard: int, fd: int, on_release=None) -> None:
        self.path, self.shard, self._fd, self._on_release = path, shard, fd, on_release

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

    def __enter__(self) -> "ShardLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lease must not keep the shard locked for the process lifetime
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"ShardLease(shard={self.shard}, held={self.held})"


def lock_scope_problem(path: str | Path, mounts_text: str | None = None) -> str | None:
    """Why flock on `path` might not exclude writers on OTHER hosts (None if nothing is known to be wrong).

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
                "shard locks are host-local, so workers on different hosts could write the same shard")
    if fstype == "lustre" and "flock" not in opts:
        how = "localflock (host-local locks)" if "localflock" in opts else "no flock option (locks fail)"
        return (f"{mnt} is Lustre mounted with {how}: run all workers on one host or remount with -o flock")
    return None


def try_lock(path: Path, shard: int, on_release=None) -> ShardLease | None:
    """Take the exclusive lock on `path` without waiting; None when another holder has it."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise StoreError(f"cannot lock {path}: {e}. The filesystem does not support flock (on Lustre mount with "
                         "-o flock; on NFS enable lockd); put the store on a filesystem with working locks") from e
    if not _still_linked(fd, path):  # `geo3d leases --break` replaced the file while we opened it: lost race
        os.close(fd)
        return None
    # Who holds it: for humans, and for `geo3d leases --break`, which breaks a lease only when this owner is gone.
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner_record()).encode(), 0)
    return ShardLease(path, shard, fd, on_release)


def owner_record() -> dict:
    """host, pid, the process's start time (pid reuse) and boot id (reboots), the claim time (UTC and epoch)."""
    import time

    from geo3d.core.provenance import utc_now

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "boot_id": boot_id(), "claimed_utc": utc_now(), "claimed_unix": time.time()}


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


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
