"""A real small filesystem for full-disk tests: a tmpfs mounted (as root) at a temp dir, grown to "free space".

Where mounting is impossible (not root, no tmpfs), `small_fs` is None and the tests use tests/fault_inject.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from helpers import REPO

INJECT = str(REPO / "tests" / "fault_inject.py")


class SmallFs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        """`mount -o remount,size=...`: the test's way of freeing space (everything written stays)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@contextmanager
def small_fs(parent: Path, size: str) -> Iterator[SmallFs | None]:
    mnt = parent / "smallfs"
    mnt.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                                              capture_output=True).returncode == 0
    try:
        yield SmallFs(mnt) if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def geo3d(args: list[str], inject: tuple[str, str, int] | None = None, timeout: float = 300
          ) -> subprocess.CompletedProcess:
    """`geo3d ARGS` as a real subprocess; with `inject=(ERRNO, target, after)` through tests/fault_inject.py."""
    from helpers import subprocess_env

    pre = [INJECT, inject[0], inject[1], str(inject[2]), "--"] if inject else ["-m", "geo3d.cli"]
    return subprocess.run([sys.executable, *pre, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env())
