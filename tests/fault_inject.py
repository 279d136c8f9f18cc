"""Run `geo3d ...` with a storage fault injected: for faults a real filesystem here cannot produce (EDQUOT, EIO)
and as the fallback for ENOSPC where no tmpfs can be mounted (not root).

    python tests/fault_inject.py ERRNO TARGET AFTER -- <geo3d args>
TARGET: `zarr` (every store chunk write: zarr.storage._local._put) or `torch` (torch.save, i.e. checkpoints);
the first AFTER calls succeed (or: AFTER is a path substring, and writes to such paths fail), every later one raises OSError(ERRNO) as the kernel would. ERRNO `HANG` instead
prints "fault-inject: hanging" and blocks forever (a test then kills the process mid-write with SIGKILL).
"""

from __future__ import annotations

import errno
import os
import sys
import time

HANG = -1


def install(code: int, target: str, after: int | str) -> None:
    """`after`: a count of calls that succeed, or a substring: calls writing a path that contains it fail."""
    calls = {"n": 0}

    def hit(args) -> bool:
        calls["n"] += 1
        if isinstance(after, str):
            return any(after in str(a) for a in args if isinstance(a, (str, os.PathLike)))
        return calls["n"] > after

    def failing(real):
        def wrapper(*args, **kwargs):
            fail = hit(args)
            if fail and code == HANG:
                print("fault-inject: hanging", file=sys.stderr, flush=True)
                time.sleep(3600)
            if fail:
                raise OSError(code, os.strerror(code), str(args[0]) if args and target == "zarr" else None)
            return real(*args, **kwargs)
        return wrapper

    if target == "zarr":
        import zarr.storage._local as local
        local._put = failing(local._put)
    elif target == "torch":
        import torch
        torch.save = failing(torch.save)
    else:
        raise SystemExit(f"unknown target {target}")


if __name__ == "__main__":
    name, target, after, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: fault_inject.py ERRNO TARGET AFTER -- geo3d args"
    install(HANG if name == "HANG" else getattr(errno, name), target, int(after) if after.isdigit() else after)
    from geo3d.cli import app
    sys.argv = ["geo3d", *rest]
    app()
