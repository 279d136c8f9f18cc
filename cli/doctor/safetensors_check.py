"""Is a .safetensors file complete and readable? Read its header (8-byte length + JSON) only: no tensor data.

A file cut short (an interrupted copy/download) is found by comparing its size with the end of the last tensor
the header describes; the last byte is read so an unreadable tail (EIO) shows too.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def safetensors_problem(path: Path) -> tuple[str | None, set[str]]:
    """(None or what is wrong, tensor names in the header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is {size} bytes: not a safetensors file (truncated)", set()
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                return f"{path}: header length {n} exceeds the file ({size} bytes): truncated or corrupt", set()
            header = json.loads(f.read(n))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
            if size < 8 + n + end:
                return (f"{path} is truncated: {size} bytes, its header describes {8 + n + end} "
                        f"({len(tensors)} tensors)"), set(tensors)
            if end:
                f.seek(8 + n + end - 1)
                f.read(1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable safetensors ({type(e).__name__}: {e})", set()
    return None, set(tensors)
