"""The reader side: random access by global frame index, safe in DataLoader workers.

zarr silently returns the fill value for chunks never written, so the reader only serves frames of
committed shards and raises for anything else. The zarr handle is opened lazily in whichever process
reads (DataLoader workers each open their own after fork/spawn); pickling carries only the path.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from geo3d.core.errors import StoreError
from geo3d.features_store import array_layout as L
from geo3d.features_store.metadata import read_metadata, spec_from_metadata
from geo3d.features_store.shardio import ShardFileReader, direct_io
from geo3d.features_store.spec import StoreSpec
from geo3d.features_store.store import committed_shards, open_arrays
from geo3d.features_store.token_codec import bits_to_bf16, frame_checksums


class FeatureReader:
    """`reader[i] -> torch.bfloat16 [V, T, D]`, `len(reader)`, `.spec`, per-frame index arrays.

    zarr_concurrency bounds zarr's async requests in each reading process (zarr's own default, 10 in 3.1.6
    and higher in some releases, is multiplied by every DataLoader worker). verify_checksums re-hashes each
    frame read (~0.6 ms).
    """

    def __init__(self, path: str | Path, zarr_concurrency: int = 4, verify_checksums: bool = False) -> None:
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.spec: StoreSpec = spec_from_metadata(self.meta)
        self.zarr_concurrency = int(zarr_concurrency)
        self.verify_checksums = verify_checksums
        self._committed = self._scan_committed()
        self._index: dict[str, np.ndarray] | None = None
        self._tokens = None
        self._shards: ShardFileReader | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.spec.frames

    def __getitem__(self, i: int):
        i = self._check_frame(i)
        bits = self._direct().frame(i) if direct_io(self.spec) else self._tokens_array()[i]
        if self.verify_checksums and frame_checksums(bits[None])[0] != self.index("checksum")[i]:
            raise StoreError(f"frame {i} of {self.path} fails its checksum; run `geo3d verify-cache {self.path}`")
        return bits_to_bf16(bits)

    # ---- committed frames ------------------------------------------------------------------------
    def _scan_committed(self) -> np.ndarray:
        mask = np.zeros(self.spec.num_shards, dtype=bool)
        mask[committed_shards(self.path)] = True
        return mask

    def refresh(self) -> None:
        """Re-read the completion markers (for reading a store that is still being written)."""
        self._committed = self._scan_committed()
        self._index = None
        if self._shards is not None:
            self._shards.close()  # a shard marked damaged and rewritten since is a new file

    @property
    def complete(self) -> bool:
        return bool(self._committed.all())

    def committed_mask(self) -> np.ndarray:
        """bool [N]: True for frames whose shard is committed."""
        return np.repeat(self._committed, self.spec.shard_frames)[: self.spec.frames]

    def _check_frame(self, i: int) -> int:
        try:
            i = operator.index(i)  # int, numpy integer, 0-d integer tensor
        except TypeError:
            raise TypeError(f"frame index must be an integer, got {type(i).__name__}") from None
        n = self.spec.frames
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range for a store of {n} frames")
        shard = i // self.spec.shard_frames
        if not self._committed[shard]:
            self.refresh()  # it may have been committed since we last looked
            if not self._committed[shard]:
                raise StoreError(f"frame {i} of {self.path} is not committed (shard {shard} has no completion "
                                 "marker); finish `geo3d precompute` for this store")
        return i

    # ---- index arrays (small: loaded once per process) -------------------------------------------
    def index(self, key: str) -> np.ndarray:
        """Per-frame array: dataset_id, episode_index, frame_index (int32), content_id, checksum (uint64).

        Entries of uncommitted frames hold fill values; check `committed_mask()`.
        """
        if self._index is None:
            self._index = self._load_index()
        return self._index[key]

    @property
    def dataset_id(self) -> np.ndarray:
        return self.index("dataset_id")

    @property
    def episode_index(self) -> np.ndarray:
        return self.index("episode_index")

    @property
    def frame_index(self) -> np.ndarray:
        return self.index("frame_index")

    @property
    def content_id(self) -> np.ndarray:
        return self.index("content_id")

    def _load_index(self) -> dict[str, np.ndarray]:
        self._ensure_open()
        arrays = open_arrays(self.path, mode="r")
        return {k: np.asarray(arrays[k][:]) for k in (*L.INT_INDEX, L.CONTENT_ID, L.CHECKSUM)}

    # ---- lazy, per-process zarr handle -----------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            zarr.config.set({"async.concurrency": self.zarr_concurrency})
            self._tokens = None
            self._shards = None  # fds are per process
            self._pid = os.getpid()

    def _tokens_array(self):
        self._ensure_open()
        if self._tokens is None:
            self._tokens = zarr.open_array(zarr.storage.LocalStore(self.path / L.TOKENS, read_only=True),
                                           mode="r", zarr_format=3)
        return self._tokens

    def _direct(self) -> ShardFileReader:
        self._ensure_open()
        if self._shards is None:
            self._shards = ShardFileReader(self.path / L.TOKENS, self.spec)
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokens"] = None  # never ship an open zarr handle to another process
        state["_shards"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (f"FeatureReader({str(self.path)!r}, frames={self.spec.frames}, "
                f"committed={int(self._committed.sum())}/{self.spec.num_shards} shards)")
