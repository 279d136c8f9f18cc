"""The zarr arrays of a store, their codecs, and where each shard's chunk files live on disk.

Directory layout (one store per suite mixture x encoder configuration):
    zarr.json                 root group; attributes["geo3d"] = self-describing metadata (schema, spec, provenance)
    tokens/                   uint16 [N, V, T, D] = bf16 bits; chunk (chunk_frames, V, T, D), shard (shard_frames, ...)
    index/{dataset_id,episode_index,frame_index}   int32 [N]
    index/content_id          uint64 [N]  source-frame content identity from the data layer (frame_content_id)
    index/checksum            uint64 [N]  sha256/64 of each frame's stored bytes
    commits/shard-XXXXXX.json completion markers (atomic); only committed shards count
    locks/shard-XXXXXX.lock   flock leases (one writer per shard)
    damaged/                  markers of shards marked damaged (kept for the record)
Index arrays are chunked by shard, so every chunk file of a shard belongs to that shard's single writer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from geo3d.core.errors import StoreError
from geo3d.features_store.spec import StoreSpec
from geo3d.features_store.token_codec import FILL_BITS

TOKENS = "tokens"
INT_INDEX = ("dataset_id", "episode_index", "frame_index")
CONTENT_ID = "content_id"
CHECKSUM = "checksum"
INDEX_KEYS = (*INT_INDEX, CONTENT_ID)  # what a writer supplies; the checksum is computed by the store
COMMITS, LOCKS, DAMAGED = "commits", "locks", "damaged"


def index_array_name(key: str) -> str:
    return f"index/{key}"


def marker_name(shard: int) -> str:
    return f"shard-{shard:06d}.json"


def lock_name(shard: int) -> str:
    return f"shard-{shard:06d}.lock"


def require_zarr3() -> Any:
    """zarr-python >= 3.1 (zarr v3 format, sharding codec); older installs would fail obscurely."""
    major, minor = (int(x) for x in zarr.__version__.split(".")[:2])
    if (major, minor) < (3, 1):
        raise StoreError(f"features stores need zarr-python >= 3.1, found {zarr.__version__}: pip install 'zarr>=3.1'")
    return zarr


def _compressors(spec: StoreSpec) -> Any:
    lay = spec.layout
    if lay.compressor == "none":
        return None
    if lay.compressor == "zstd":
        return [ZstdCodec(level=lay.compression_level, checksum=False)]
    return [BloscCodec(cname="zstd", clevel=lay.compression_level, shuffle="shuffle", typesize=2)]


def create_arrays(root: Path, spec: StoreSpec, attributes: dict[str, Any]) -> None:
    """Create the root group (with metadata) and every array under `root` (a fresh, private directory)."""
    zarr = require_zarr3()

    lay = spec.layout
    store = zarr.storage.LocalStore(root)
    group = zarr.create_group(store=store, zarr_format=3, attributes=attributes)
    n, shape = spec.frames, spec.frame_shape
    group.create_array(
        TOKENS, shape=(n, *shape), dtype="uint16", chunks=(lay.chunk_frames, *shape),
        shards=(lay.shard_frames, *shape) if lay.sharding else None, compressors=_compressors(spec),
        fill_value=FILL_BITS, config={"write_empty_chunks": True},
        attributes={"dtype": "bfloat16", "storage": "uint16 bits of bfloat16 values; view, never cast"})
    small = [ZstdCodec(level=3)]
    for key in INT_INDEX:
        group.create_array(index_array_name(key), shape=(n,), dtype="int32", chunks=(lay.shard_frames,),
                           compressors=small, fill_value=-1, config={"write_empty_chunks": True})
    for key in (CONTENT_ID, CHECKSUM):
        group.create_array(index_array_name(key), shape=(n,), dtype="uint64", chunks=(lay.shard_frames,),
                           compressors=small, fill_value=0, config={"write_empty_chunks": True})
    for d in (COMMITS, LOCKS, DAMAGED):
        (root / d).mkdir()


def chunk_files(spec: StoreSpec, shard: int) -> list[str]:
    """Relative paths of every chunk/shard file holding data of `shard` (default '/' chunk key encoding)."""
    lay = spec.layout
    if lay.sharding:
        tok = [f"{TOKENS}/c/{shard}/0/0/0"]
    else:
        per = lay.shard_frames // lay.chunk_frames
        first = shard * per
        last = min(first + per, -(-spec.frames // lay.chunk_frames))
        tok = [f"{TOKENS}/c/{j}/0/0/0" for j in range(first, last)]
    return tok + [f"index/{k}/c/{shard}" for k in (*INT_INDEX, CONTENT_ID, CHECKSUM)]


def index_digest(int_index: dict[str, np.ndarray], content_id: np.ndarray, checksum: np.ndarray) -> str:
    """One hash over a shard's index arrays, recorded in its marker: catches a corrupted index chunk."""
    h = hashlib.sha256()
    for key in INT_INDEX:
        h.update(np.ascontiguousarray(int_index[key], dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(content_id, dtype="<u8").tobytes())
    h.update(np.ascontiguousarray(checksum, dtype="<u8").tobytes())
    return h.hexdigest()
