"""Exact bf16 <-> uint16 bit conversion, per-frame checksums, NaN/Inf detection, content-id encoding.

zarr has no bfloat16 dtype, so the store keeps the raw bf16 bit patterns as uint16. Viewing (never casting)
keeps every value bit-exact, including NaN payloads and signed zeros.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch

from geo3d.errors import StoreError

# bf16 layout: 1 sign, 8 exponent, 7 mantissa bits. Exponent all ones = Inf (mantissa 0) or NaN.
_EXP_MASK = np.uint16(0x7F80)
# Never-written chunks read back as this fill value: a bf16 NaN, so a silent zarr fill is loud, not zeros.
FILL_BITS = 0xFFFF


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
    """One uint64 per frame (axis 0) over the frame's stored bytes (little-endian uint16)."""
    bits = np.ascontiguousarray(bits, dtype="<u2")
    out = np.empty(bits.shape[0], dtype=np.uint64)
    for i in range(bits.shape[0]):
        out[i] = int.from_bytes(hashlib.sha256(bits[i].data).digest()[:8], "little")
    return out


def nonfinite_frames(bits: np.ndarray) -> np.ndarray:
    """Indices (axis 0) of frames holding any NaN or Inf, found on the bits (no float conversion)."""
    flat = bits.reshape(bits.shape[0], -1)
    return np.flatnonzero(((flat & _EXP_MASK) == _EXP_MASK).any(axis=1))


def encode_content_ids(ids: Sequence[Any] | np.ndarray, nbytes: int) -> np.ndarray:
    """Content ids (hex strings, bytes, or unsigned ints) -> uint8 [n, nbytes]; longer ids keep their prefix.

    Kept as raw bytes because zarr v3 has no stable fixed-length string dtype.
    """
    arr = np.asarray(ids)
    out = np.zeros((len(arr), nbytes), dtype=np.uint8)
    for i, v in enumerate(arr.tolist()):
        raw = _content_id_bytes(v)
        raw = raw[:nbytes]
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_content_ids(arr: np.ndarray) -> np.ndarray:
    """uint8 [n, nbytes] -> hex strings (numpy unicode array), the form verify compares and reports."""
    return np.array([bytes(row).hex() for row in np.asarray(arr, dtype=np.uint8)], dtype=f"<U{2 * arr.shape[1]}")


def normalize_content_id(value: Any, nbytes: int) -> str:
    """The hex form of a content id as it is stored (prefix of `nbytes`, zero padded): for comparisons."""
    raw = _content_id_bytes(value)[:nbytes]
    return (raw + bytes(nbytes - len(raw))).hex()


def _content_id_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, str):
        try:
            return bytes.fromhex(v)
        except ValueError as e:
            raise StoreError(f"content id {v!r} is not a hex string") from e
    if isinstance(v, (int, np.integer)):
        if v < 0:
            raise StoreError(f"content id {v} is negative; use unsigned ids")
        return int(v).to_bytes(8, "big")
    raise StoreError(f"content id must be hex str, bytes or unsigned int, got {type(v).__name__}")
