"""How a run was made: recorded in every artifact geo3d writes (stores, checkpoints, reports)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
import subprocess
import sys
from typing import Any, Mapping

from geo3d import __version__
from geo3d.core.config import PACKAGE_ROOT


def git_commit() -> str | None:
    """The source commit (with `-dirty` when the tree has local changes), or None outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, Any]:
    """A JSON-serialisable record of tool version, code commit, command line, host and library versions."""
    libs = {}
    for name in ("torch", "numpy", "zarr", "transformers", "accelerate", "av", "pyarrow"):
        mod = sys.modules.get(name)
        if mod is not None:
            libs[name] = getattr(mod, "__version__", "?")
    return {
        "tool": "geo3d",
        "tool_version": __version__,
        "git_commit": git_commit(),
        "argv": list(sys.argv),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "libraries": libs,
        "created_utc": utc_now(),
    }


# -- the kernel runtime record (geo3d.core.device.kernel_runtime makes it), compared without torch --------------
RUNTIME_KEY = "runtime"
# Keys whose difference can change kernels and so the bits (everything the record holds except this list).
NOT_KERNEL_KEYS = ("recorded_by",)


def kernel_key(runtime: Mapping[str, Any] | None) -> tuple | None:
    """The part of a runtime record that selects kernels (None for a record from before runtimes existed)."""
    if not runtime:
        return None
    return tuple(sorted((k, str(v)) for k, v in runtime.items() if k not in NOT_KERNEL_KEYS))


def without_runtime(identity: Mapping[str, Any]) -> dict[str, Any]:
    """An encoder identity minus its informational runtime: what must match to attach or rebuild (resuming a
    store on another device type or torch is allowed; each shard records its own runtime)."""
    return {k: v for k, v in identity.items() if k != RUNTIME_KEY}


# -- the one JSON normaliser: records (store specs, dataset and encoder identities) compare as plain JSON ---------
def plain_json(value: Any, stringify: bool = False) -> Any:
    """`value` as it reads back from JSON: tuples become lists, keys sorted. With `stringify`, anything JSON
    cannot hold (Path, numpy scalar) becomes its str(); without it, such a value raises TypeError."""
    return json.loads(json.dumps(value, sort_keys=True, default=str if stringify else None))
