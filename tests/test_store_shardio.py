"""Direct shard I/O (features_store/shardio.py) writes exactly zarr's bytes, and plain zarr-python reads it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr

from geo3d.core.errors import StoreError
from geo3d.features_store import FeatureReader, FeatureStore, shardio
from geo3d.features_store import array_layout as L
from geo3d.features_store.testing import synthetic_spec, synthetic_tokens, write_all_shards


def _store(path, spec, direct: bool, monkeypatch):
    monkeypatch.setattr("geo3d.features_store.store.direct_io", lambda s: direct and shardio.direct_io(s))
    store = FeatureStore.open_or_create(path, spec)
    write_all_shards(store)
    return store


@pytest.mark.parametrize("chunk", [1, 2])
def test_shard_files_equal_zarrs_own_and_zarr_reads_them(tmp_path, monkeypatch, chunk):
    spec = synthetic_spec(frames=10, shard_frames=4)  # the last shard is partial (2 of 4 frames)
    spec = dataclasses.replace(spec, layout=dataclasses.replace(spec.layout, chunk_frames=chunk))
    assert shardio.direct_io(spec)
    ours = _store(tmp_path / "ours", spec, True, monkeypatch)
    theirs = _store(tmp_path / "zarr", spec, False, monkeypatch)
    for shard in range(ours.num_shards):
        rel = L.chunk_files(spec, shard)[0]
        assert (ours.path / rel).read_bytes() == (theirs.path / rel).read_bytes(), shard

    arr = zarr.open_array(zarr.storage.LocalStore(ours.path / L.TOKENS, read_only=True), mode="r")
    want = synthetic_tokens(spec, range(10)).view(torch.uint16).numpy()
    np.testing.assert_array_equal(arr[:], want)
    reader = FeatureReader(ours.path)
    for i in (9, 0, 5, 3):
        assert torch.equal(reader[i].view(torch.int16), torch.from_numpy(want[i].view(np.int16)))


def test_a_damaged_shard_index_is_a_clear_error(tmp_path, monkeypatch):
    spec = synthetic_spec(frames=8, shard_frames=4)
    store = _store(tmp_path / "s", spec, True, monkeypatch)
    f = store.path / L.chunk_files(spec, 1)[0]
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # inside the index block
    f.write_bytes(bytes(data))
    reader = FeatureReader(store.path)
    assert reader[0].shape == (2, 4, 8)
    with pytest.raises(StoreError, match="index checksum mismatch"):
        reader[5]
    f.write_bytes(bytes(data[:100]))
    with pytest.raises(StoreError, match="index checksum mismatch"):
        FeatureReader(store.path)[6]


def test_compressed_and_unsharded_layouts_keep_zarrs_path():
    spec = synthetic_spec(frames=8, shard_frames=4)
    lay = spec.layout
    assert not shardio.direct_io(dataclasses.replace(spec, layout=dataclasses.replace(lay, compressor="zstd")))
    assert not shardio.direct_io(dataclasses.replace(spec, layout=dataclasses.replace(lay, sharding=False)))
