"""Per-frame content identity: a hash of the decoded pixels of both cameras as stored.

Stage 1 records it per frame; `verify-cache --deep` and stage 2 recompute it to notice that the dataset
(or the decoder's output) changed under a cache. Hashing decoded pixels, not file bytes, makes it
independent of container/muxing details but dependent on the decoder: a different AV1 decoder build
producing different pixels is, correctly, reported as a change.
"""

from __future__ import annotations

import hashlib

import numpy as np


def frame_content_id(frames_as_stored: np.ndarray) -> int:
    """uint8 [V,H,W,3] -> 64-bit id (blake2b-8 of shape + bytes), an int in [0, 2**64) storable as uint64."""
    arr = np.ascontiguousarray(frames_as_stored)
    if arr.dtype != np.uint8:
        raise ValueError(f"frame_content_id expects uint8 frames as stored, got {arr.dtype}")
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(arr.shape, dtype=np.int64).tobytes())
    h.update(memoryview(arr).cast("B"))
    return int.from_bytes(h.digest(), "little")
