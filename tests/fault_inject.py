"""Run `geo3d ...` with a storage fault injected: for faults a real filesystem here cannot produce (EDQUOT, EIO)
and as the fallback for ENOSPC where no tmpfs can be mounted (not root).

    python tests/fault_inject.py ERRNO TARGET AFTER -- <geo3d args>
TARGET: `zarr` (every store chunk write: zarr.storage._local._put) or `torch` (torch.save, i.e. checkpoints);
the first AFTER calls succeed, every later one raises OSError(ERRNO) as the kernel would.
"""

from __future__ import annotations

import errno
import os
import sys


def install(code: int, target: str, after: int) -> None:
    calls = {"n": 0}

    def failing(real):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > after:
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
    install(getattr(errno, name), target, int(after))
    from geo3d.cli import app
    sys.argv = ["geo3d", *rest]
    app()
