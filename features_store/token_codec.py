"""Exact bf16 <-> uint16 bit conversion, per-frame checksums, NaN/Inf detection, content-id encoding.

zarr has no bfloat16 dtype, so the store keeps the raw bf16 bit patterns as uint16. Viewing (never casting)
keeps every value bit-exact, including NaN payloads and signed zeros.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch

from geo3d.core.errors import StoreError

# bf16 layout: 1 sign, 8 exponent, 7 mantissa bits. Exponent all ones = Inf (mantissa 0) or NaN, so with the
# sign bit cleared a value is non-finite exactly when its bits are >= 0x7F80.
_ABS_MASK = np.uint16(0x7FFF)
_INF_BITS = np.uint16(0x7F80)
# Never-written chunks read back as this fill value: a bf16 NaN, so a silent zarr fill is loud, not zeros.
FILL_BITS = 0xFFFF
SCAN_THREADS = min(4, os.cpu_count() or 1)  # threads for the checksum / NaN passes over a shard


def bf16_to_bits(tokens: torch.Tensor) -> np.ndarray:
    """torch.bfloat16 -> uint16 numpy array of the same shape (a view of the bits; no rounding)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.bfloat16:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise StoreError(f"tokens must be a torch.bfloat16 tensor, got {got}; cast with .to(torch.bfloat16) "
                         "once, where the encoder output is produced")
    return tokens.detach().cpu().contiguous().view(torch.uint16).numpy()


def bits_to_bf16(bits: np.ndarray) -> torch.Tensor:
    """uint16 numpy -> torch.bfloat16 with identical bits."""
    return torch.from_numpy(np.ascontiguousarray(bits, dtype=np.uint16)).view(torch.bfloat16)


def frame_checksums(bits: np.ndarray) -> np.ndarray:
    """One uint64 per frame (axis 0) over the frame's stored bytes (little-endian uint16).

    Frames are hashed on a few threads (hashlib releases the GIL): on the write path this pass costs as much
    as the write itself when done on one core.
    """
    bits = np.ascontiguousarray(bits, dtype="<u2")
    out = np.empty(bits.shape[0], dtype=np.uint64)

    def one(i: int) -> None:
        out[i] = int.from_bytes(hashlib.sha256(bits[i].data).digest()[:8], "little")

    _for_each_frame(one, bits.shape[0])
    return out


def nonfinite_frames(bits: np.ndarray) -> np.ndarray:
    """Indices (axis 0) of frames holding any NaN or Inf, found on the bits (no float conversion)."""
    flat = bits.reshape(bits.shape[0], -1)
    if flat.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.zeros(flat.shape[0], dtype=bool)

    def one(i: int) -> None:  # per frame: the masked copy stays in cache; one SIMD max is ~15x faster than any()
        bad[i] = (flat[i] & _ABS_MASK).max() >= _INF_BITS

    _for_each_frame(one, flat.shape[0])
    return np.flatnonzero(bad)


def _for_each_frame(fn: Callable[[int], None], n: int) -> None:
    """Run fn(0..n-1) on up to SCAN_THREADS threads (numpy ufuncs and sha256 release the GIL)."""
    workers = min(SCAN_THREADS, n)
    if workers <= 1:
        for i in range(n):
            fn(i)
        return

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, range(n)))


def encode_content_ids(ids: Any) -> np.ndarray:
    """Per-frame content ids from the data layer (`geo3d.data.frame_content_id`: ints in [0, 2**64)) -> uint64."""
    try:
        arr = np.asarray([int(v) for v in np.asarray(ids).tolist()], dtype=np.uint64)
    except (TypeError, ValueError, OverflowError) as e:
        raise StoreError(f"content ids must be unsigned 64-bit ints (geo3d.data.frame_content_id): {e}") from e
    return arr
