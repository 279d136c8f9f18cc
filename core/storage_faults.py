"""Storage faults on long jobs: a full disk, a quota, failing or read-only storage, a vanished directory.

Every long-running verb wraps its writing in `storage_guard(...)` (or decorates a writer with
`guard_writes(...)`). An OSError with one of the errnos below (also when a library wrapped it: torch's
`RuntimeError: ... file write failed`, safetensors' `os error 28`) becomes one `StorageFault`: what failed,
where, free space vs what the job still needs, what is already safe, the exact command that resumes. It
exits with STORAGE_FAULT_EXIT_CODE, which the SLURM job scripts never requeue on: a full disk stays full.

    with storage_guard("precompute", store_path, needed=lambda: remaining_bytes(store),
                       safe=lambda: f"{len(store.committed_shards())} committed shards",
                       cleanup=lambda: ...):
        ...write...
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from geo3d.core.errors import Geo3dError

# EX_IOERR (sysexits.h): "an error occurred while doing I/O on some file". Not 75: retrying cannot help.
STORAGE_FAULT_EXIT_CODE = 74

FAULT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "the filesystem is full (ENOSPC)",
    errno.EDQUOT: "your disk quota is exhausted (EDQUOT)",
    errno.EIO: "the storage reported an I/O error (EIO)",
    errno.EROFS: "the filesystem is read-only (EROFS)",
    errno.ESTALE: "the network filesystem handle went stale (ESTALE)",
}
# Library errors that lost the errno: (pattern, errno it stands for).
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"no space left on device|os error 28|errno 28", re.I), errno.ENOSPC),
    (re.compile(r"disk quota exceeded|os error 122|errno 122", re.I), errno.EDQUOT),
    (re.compile(r"read-only file ?system|os error 30|errno 30", re.I), errno.EROFS),
    (re.compile(r"input/output error|os error 5\b|errno 5\b", re.I), errno.EIO),
)
# torch.save to a path reports a cut write only as "file write failed" / "unexpected pos"; when the target
# filesystem is (nearly) out of space at that moment, that is what happened.
_OPAQUE_WRITE = re.compile(r"file write failed|unexpected pos|PytorchStreamWriter failed", re.I)
NEARLY_FULL_BYTES = 1 << 20

F = TypeVar("F", bound=Callable[..., Any])


class StorageFault(Geo3dError):
    """A write failed because of the storage, not the input. Free space (or fix the storage), then resume."""

    exit_code = STORAGE_FAULT_EXIT_CODE

    def __init__(self, message: str, errno_: int, path: str | None) -> None:
        super().__init__(message)
        self.errno, self.path = errno_, path


def existing_ancestor(path: str | Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged user can still write on the filesystem holding `path` (None if unknown).

    A quota (EDQUOT) can be far below this: statvfs does not see quotas."""
    try:
        st = os.statvfs(existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _vanished(e: OSError, root: Path, root_existed: bool) -> bool:
    """ENOENT is a storage fault only when the output tree itself went away: `root` existed and is gone, or
    the failing path lies under `root` and its directory no longer exists. A missing input file is not."""
    if root_existed and not root.exists():
        return True
    if not e.filename:
        return False
    failed = Path(os.path.abspath(e.filename))
    inside = failed == root or Path(os.path.abspath(root)) in failed.parents
    return inside and not failed.parent.exists()


def classify(exc: BaseException, root: str | Path | None = None,
             root_existed: bool = True) -> tuple[int, str | None] | None:
    """(errno, failing path) when `exc` (or anything it wraps) is a storage fault, else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FAULT_ERRNOS:
            return e.errno, e.filename
        if isinstance(e, OSError) and e.errno == errno.ENOENT and root is not None and \
                _vanished(e, Path(root), root_existed):
            return errno.ENOENT, e.filename or str(root)
        text = str(e)
        for pattern, code in _TEXT_PATTERNS:
            if pattern.search(text):
                return code, None
        if root is not None and _OPAQUE_WRITE.search(text):
            free = free_bytes(root)
            if free is not None and free < NEARLY_FULL_BYTES:
                return errno.ENOSPC, None
        e = e.__cause__ or e.__context__
    return None


def resume_command(argv: Sequence[str] | None = None, add: Sequence[str] = (), drop: Sequence[str] = ()) -> str:
    """The command line that resumes this run: this one, minus flags that would discard work (`--overwrite`)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in drop]
    args += [a for a in add if a not in args]
    return shlex.join(["geo3d", *args])


def _call(fn: Callable[[], Any] | None) -> Any:
    """Hooks run while the disk is failing: a hook that fails itself must not hide the fault."""
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reporting, never masking
        return f"(could not determine: {e})"


def fault_message(verb: str, code: int, failed_path: str | None, root: Path, needed: int | str | None,
                  safe: str | None, resume: str) -> str:
    what = FAULT_ERRNOS.get(code, "the output directory vanished (ENOENT)")
    free = free_bytes(root)
    target = Path(os.path.abspath(failed_path)) if failed_path else None
    writing = target is None or Path(os.path.abspath(root)) in (target, *target.parents)
    lines = [f"{verb}: storage fault: {what} while {'writing' if writing else 'accessing'} {failed_path or root}",
             f"  where: {root} (filesystem at {existing_ancestor(root)})",
             f"  free space: {human_bytes(free)}; this job still needs "
             + (needed if isinstance(needed, str) else f"~{human_bytes(needed)}" if needed is not None else "unknown")]
    if code == errno.EDQUOT:
        lines.append("  a quota is lower than the free space shown: check it with `quota -s` or `lfs quota -u $USER "
                     "<mount>`, delete files or ask for more")
    elif code in (errno.EIO, errno.ESTALE):
        lines.append("  the storage itself failed: check the node's kernel log / ask the admins before rerunning")
    elif code == errno.EROFS:
        lines.append("  write somewhere writable (or ask why the filesystem was remounted read-only)")
    elif code == errno.ENOENT:
        lines.append("  the directory was deleted or unmounted while the job ran: restore or recreate it")
    else:
        lines.append("  free space (or move the output to a larger filesystem), then resume")
    lines.append(f"  already safe: {safe or 'nothing yet'}; anything half-written is discarded, never used")
    lines.append(f"  resume with: {resume}")
    lines.append(f"  (exit {STORAGE_FAULT_EXIT_CODE}: storage fault; SLURM jobs do not requeue on it)")
    return "\n".join(lines)


@contextlib.contextmanager
def storage_guard(verb: str, root: str | Path, *, resume: str | None = None,
                  needed: Callable[[], int | str | None] | None = None, safe: Callable[[], str | None] | None = None,
                  cleanup: Callable[[], Any] | None = None) -> Iterator[None]:
    """Turn a storage fault raised inside the block into a StorageFault (other errors pass through untouched).

    root: the directory the job writes (free space is measured there); resume: the command that continues
    (default: this command line); needed/safe: estimate hooks called only on a fault; cleanup: removes what
    the fault cut short (a partial shard, a partial checkpoint), run before the message is built so the
    free space it reports is after the cleanup."""
    existed = Path(root).exists()
    try:
        yield
    except StorageFault:
        raise
    except Exception as exc:
        found = classify(exc, root, existed)
        if found is None:
            raise
        code, failed = found
        _call(cleanup)
        msg = fault_message(verb, code, failed, Path(root), _call(needed), _call(safe), resume or resume_command())
        raise StorageFault(msg, code, failed) from exc


def guard_writes(verb: str, root: Callable[..., str | Path] | str | Path, **hooks: Any) -> Callable[[F], F]:
    """Decorator form of storage_guard for a writer function (`root` may be computed from its arguments)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            where = root(*args, **kwargs) if callable(root) else root
            with storage_guard(verb, where, **hooks):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
