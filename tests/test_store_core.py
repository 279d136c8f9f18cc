"""Features store, single process: bit-exact bf16, commits, refusals, spec diffs, schema gate, reader."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from geo3d.core.errors import StoreError
from geo3d.features_store import FeatureReader, FeatureStore, StoreLayout
from geo3d.features_store.leases import lock_scope_problem
from geo3d.features_store.testing import (
    make_synthetic_store,
    synthetic_index,
    synthetic_spec,
    synthetic_tokens,
    write_all_shards,
)


def test_roundtrip_is_bit_exact_including_special_values(tmp_path):
    spec = synthetic_spec(frames=10, shard_frames=4)
    store = FeatureStore.open_or_create(tmp_path / "s", spec)
    assert store.num_shards == 3 and store.shard_range(2) == range(8, 10)
    written = {}
    for i in range(store.num_shards):
        rng = store.shard_range(i)
        tok = synthetic_tokens(spec, rng)
        # bit patterns that a float round trip would change: -0, subnormals, tiny/huge finite values
        flat = tok.view(torch.int16).view(-1)
        flat[:4] = torch.tensor([-32768, 1, 0x7F7F, 0x0080], dtype=torch.int32).to(torch.int16)
        written.update({f: tok[j].clone() for j, f in enumerate(rng)})
        store.write_shard(i, tok, synthetic_index(spec, rng))
    reader = FeatureReader(tmp_path / "s")
    assert len(reader) == 10 and reader.complete and reader.spec == spec
    for f, tok in written.items():
        got = reader[f]
        assert got.dtype == torch.bfloat16 and got.shape == (2, 4, 8)
        assert torch.equal(got.view(torch.int16), tok.view(torch.int16))
    assert reader[-1].shape == (2, 4, 8)
    np.testing.assert_array_equal(reader.frame_index, np.arange(10) % 5)
    np.testing.assert_array_equal(reader.content_id, np.arange(10, dtype=np.uint64) + 1000)


def test_uncommitted_frames_are_refused_not_filled(tmp_path):
    store = FeatureStore.open_or_create(tmp_path / "s", synthetic_spec(frames=16, shard_frames=8))
    write_all_shards(store, shards=[0])
    reader = FeatureReader(tmp_path / "s")
    assert reader[7].shape == (2, 4, 8)
    with pytest.raises(StoreError, match="frame 8 .* not committed"):
        reader[8]
    assert reader.committed_mask().tolist() == [True] * 8 + [False] * 8
    write_all_shards(store, shards=[1])  # committed later: the reader notices without being rebuilt
    assert reader[8].shape == (2, 4, 8)
    with pytest.raises(IndexError):
        reader[16]


def test_write_shard_refusals(tmp_path):
    spec = synthetic_spec(frames=16, shard_frames=8)
    store = FeatureStore.open_or_create(tmp_path / "s", spec)
    rng = store.shard_range(0)
    tok, idx = synthetic_tokens(spec, rng), synthetic_index(spec, rng)
    with pytest.raises(StoreError, match="shape"):
        store.write_shard(0, tok[:5], idx)
    with pytest.raises(StoreError, match="bfloat16"):
        store.write_shard(0, tok.float(), idx)
    with pytest.raises(StoreError, match="lacks"):
        store.write_shard(0, tok, {k: v for k, v in idx.items() if k != "content_id"})
    bad = tok.clone()
    bad[3, 1, 2, 0] = float("nan")
    with pytest.raises(StoreError, match=r"NaN/Inf tokens in frames \[3\]"):
        store.write_shard(0, bad, idx)
    assert store.committed_shards() == []
    store.write_shard(0, tok, idx)
    with pytest.raises(StoreError, match="already committed"):
        store.write_shard(0, tok, idx)
    assert store.mark_damaged([0], reason="test") == [0]
    assert store.missing_shards() == [0, 1]
    store.mark_damaged([0], reason="again")  # a second record (same second) must not replace the first
    records = [json.loads(p.read_text()) for p in (tmp_path / "s" / "damaged").iterdir()]
    assert sorted(r["reason"] for r in records) == ["again", "test"]  # the record of what was un-committed stays
    assert any(r["marker"] and r["marker"]["shard"] == 0 for r in records)
    store.write_shard(0, tok, idx)
    assert store.committed_shards() == [0]


def test_one_writer_per_shard_between_handles(tmp_path):
    spec = synthetic_spec(frames=16, shard_frames=8)
    a = FeatureStore.open_or_create(tmp_path / "s", spec)
    b = FeatureStore.open_or_create(tmp_path / "s", spec)
    lease = a.try_claim(1)
    assert lease is not None and b.try_claim(1) is None
    rng = b.shard_range(1)
    with pytest.raises(StoreError, match="another process"):
        b.write_shard(1, synthetic_tokens(spec, rng), synthetic_index(spec, rng))
    with lease:
        a.write_shard(1, synthetic_tokens(spec, rng), synthetic_index(spec, rng))
    assert not lease.held
    with b.try_claim(1) as again:  # released on exit
        assert again is not None
    marker = json.loads((tmp_path / "s" / "commits" / "shard-000001.json").read_text())
    assert marker["start"] == 8 and marker["stop"] == 16 and len(marker["index_digest"]) == 64


def test_attach_with_other_config_is_refused_with_a_diff(tmp_path):
    make_synthetic_store(tmp_path / "s", frames=12, shard_frames=4)
    other_encoder = {"name": "synthetic", "fingerprint": "synthetic-1", "config": {"seed": 0}}
    with pytest.raises(StoreError, match=r"encoder\.fingerprint: store has \"synthetic-0\", requested \"synthetic-1\""):
        FeatureStore.open_or_create(tmp_path / "s", synthetic_spec(frames=12, shard_frames=4, encoder=other_encoder))
    with pytest.raises(StoreError, match=r"layout\.compressor"):
        FeatureStore.open_or_create(tmp_path / "s", synthetic_spec(frames=12, shard_frames=4, compressor="zstd"))
    with pytest.raises(StoreError, match=r"frames: store has 12, requested 13"):
        FeatureStore.open_or_create(tmp_path / "s", synthetic_spec(frames=13, shard_frames=4))
    # nothing was touched by the refusals
    assert FeatureStore.open(tmp_path / "s").committed_shards() == [0, 1, 2]


def test_overwrite_replaces_only_a_geo3d_store(tmp_path):
    make_synthetic_store(tmp_path / "s", frames=8, shard_frames=4)
    fresh = FeatureStore.open_or_create(tmp_path / "s", synthetic_spec(frames=9, shard_frames=4), overwrite=True)
    assert fresh.committed_shards() == [] and fresh.spec.frames == 9
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    with pytest.raises(StoreError, match="not a geo3d features store"):
        FeatureStore.open_or_create(tmp_path / "other", synthetic_spec(), overwrite=True)
    with pytest.raises(StoreError, match="not empty"):
        FeatureStore.open_or_create(tmp_path / "other", synthetic_spec())
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()  # e.g. made by a job script: --overwrite has nothing to delete, just fills it
    assert FeatureStore.open_or_create(tmp_path / "empty", synthetic_spec(), overwrite=True).committed_shards() == []


def test_newer_schema_and_non_store_are_clear_errors(tmp_path):
    make_synthetic_store(tmp_path / "s", frames=4, shard_frames=4)
    zjson = tmp_path / "s" / "zarr.json"
    root = json.loads(zjson.read_text())
    root["attributes"]["geo3d"]["schema_version"] = 99
    zjson.write_text(json.dumps(root))
    with pytest.raises(StoreError, match="schema version 99, newer"):
        FeatureReader(tmp_path / "s")
    with pytest.raises(StoreError, match="does not exist"):
        FeatureReader(tmp_path / "nope")
    with pytest.raises(StoreError, match="bad_key"):
        StoreLayout.from_config({"shard_frames": 8, "bad_key": 1})
    with pytest.raises(StoreError, match="multiple"):
        StoreLayout(shard_frames=6, chunk_frames=4)


@pytest.mark.parametrize("layout", [dict(compressor="zstd"), dict(compressor="blosc_zstd"),
                                    dict(sharding=False, chunk_frames=2)])
def test_layout_variants_roundtrip(tmp_path, layout):
    store = make_synthetic_store(tmp_path / "s", frames=10, shard_frames=4, seed=3, **layout)
    reader = FeatureReader(tmp_path / "s")
    for f in (0, 5, 9):
        assert torch.equal(reader[f].view(torch.int16), synthetic_tokens(store.spec, range(f, f + 1), 3)[0]
                           .view(torch.int16))


def test_reader_pickles_and_works_in_dataloader_workers(tmp_path):
    make_synthetic_store(tmp_path / "s", frames=24, shard_frames=8)
    reader = FeatureReader(tmp_path / "s", zarr_concurrency=2, verify_checksums=True)
    _ = reader[0]  # open in the parent first: workers must not reuse the parent's handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._tokens is None and torch.equal(clone[3], reader[3])
    loader = torch.utils.data.DataLoader(reader, batch_size=4, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    seen = torch.cat([b for b in loader])
    assert seen.shape == (24, 2, 4, 8) and seen.dtype == torch.bfloat16
    ref = torch.stack([reader[i] for i in range(24)])
    assert sorted(seen.float().sum(dim=(1, 2, 3)).tolist()) == sorted(ref.float().sum(dim=(1, 2, 3)).tolist())


def test_real_token_shape(tmp_path):
    spec = synthetic_spec(frames=3, tokens=196, dim=1536, shard_frames=2)
    store = FeatureStore.open_or_create(tmp_path / "s", spec)
    write_all_shards(store)
    reader = FeatureReader(tmp_path / "s")
    got = reader[2]
    assert got.shape == (2, 196, 1536) and got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16), synthetic_tokens(spec, range(2, 3))[0].view(torch.int16))


def test_lock_scope_problems_are_recognised_from_mount_options():
    mounts = "\n".join([
        "/dev/vda / ext4 rw,relatime 0 0",
        "srv:/export /scratch nfs4 rw,vers=4.2,local_lock=all 0 0",
        "srv:/home /home nfs rw,vers=4.2,local_lock=none 0 0",
        "10.0.0.1@tcp:/fs /lustre lustre rw,localflock 0 0",
        "10.0.0.1@tcp:/fs2 /lustre2 lustre rw,flock 0 0",
    ])
    assert lock_scope_problem("/tmp/x", mounts) is None
    assert "host-local" in lock_scope_problem("/scratch/stores/s", mounts)
    assert lock_scope_problem("/home/me/s", mounts) is None
    assert "localflock" in lock_scope_problem("/lustre/s", mounts)
    assert lock_scope_problem("/lustre2/s", mounts) is None
