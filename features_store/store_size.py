"""How many bytes a store takes on disk, from its layout alone: the one estimate behind precompute's free-space
check at start, the storage-fault message ("this job still needs ...") and `geo3d doctor`.

Per frame: V*T*D bf16 tokens (2 bytes each, times the compressor's typical ratio measured by
scripts/bench_store.py on real-shaped tokens), 28 bytes of index arrays (3 x int32 + 2 x uint64, before
their zstd), the sharding codec's 16-byte chunk index entry; per shard one ~0.5 KiB completion marker and a
lock file, and each of its 6 files rounded up to a 4 KiB filesystem block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Typical size / raw of bf16 geometry tokens per compressor (bench_store.py: 0.78 zstd, 0.74 blosc-zstd).
COMPRESSION_RATIO = {"none": 1.0, "zstd": 0.78, "blosc_zstd": 0.74}
INDEX_BYTES_PER_FRAME = 3 * 4 + 2 * 8
CHUNK_INDEX_BYTES = 16
SHARD_OVERHEAD_BYTES = 512 + 6 * 4096  # marker + per-file block rounding
METADATA_BYTES = 64 * 1024  # zarr.json files, precompute_logs/ of a few runs


def estimate_bytes(frames: int, views: int, tokens: int, dim: int, shard_frames: int, compressor: str = "none",
                   chunk_frames: int = 1) -> int:
    """Bytes a store of this shape takes when complete."""
    shards = -(-int(frames) // int(shard_frames))
    return _frames_bytes(int(frames), views, tokens, dim, compressor, chunk_frames) + shards * SHARD_OVERHEAD_BYTES \
        + METADATA_BYTES


def _frames_bytes(frames: int, views: int, tokens: int, dim: int, compressor: str, chunk_frames: int) -> int:
    token_bytes = frames * views * tokens * dim * 2 * COMPRESSION_RATIO.get(compressor, 1.0)
    chunks = -(-frames // max(1, int(chunk_frames)))
    return int(token_bytes + frames * INDEX_BYTES_PER_FRAME + chunks * CHUNK_INDEX_BYTES)


def spec_bytes(spec: Any, frames: int | None = None) -> int:
    """Estimated bytes of `spec`'s store (or of `frames` of its frames, without the store-wide metadata)."""
    lay = spec.layout
    if frames is None:
        return estimate_bytes(spec.frames, spec.views, spec.tokens, spec.dim, lay.shard_frames, lay.compressor,
                              lay.chunk_frames)
    shards = -(-int(frames) // lay.shard_frames)
    return _frames_bytes(int(frames), spec.views, spec.tokens, spec.dim, lay.compressor, lay.chunk_frames) \
        + shards * SHARD_OVERHEAD_BYTES


def payload_bytes(spec: Any, frames: int) -> int:
    """Uncompressed tokens + index of `frames` frames, without the store's per-shard files (an export's size)."""
    return _frames_bytes(int(frames), spec.views, spec.tokens, spec.dim, "none", spec.layout.chunk_frames)


def remaining_bytes(spec: Any, committed: list[int]) -> int:
    """What a store still needs: its uncommitted shards (a shard cut by a fault counts as not written)."""
    done = set(committed)
    frames = sum(min(spec.shard_frames, spec.frames - i * spec.shard_frames)
                 for i in range(spec.num_shards) if i not in done)
    return spec_bytes(spec, frames) if frames else 0


def du_bytes(path: str | Path) -> int:
    """Bytes actually allocated under `path` (st_blocks, like `du`): an existing store's or checkpoint's size."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total
