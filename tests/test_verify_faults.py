"""verify_store plants each store-level fault on a real store on disk and must name the bad frames."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
import zarr

from geo3d.core.errors import StoreError
from geo3d.features_store import FeatureStore, verify_store
from geo3d.features_store import array_layout as L
from geo3d.features_store.testing import make_synthetic_store, synthetic_tokens, write_all_shards
from geo3d.features_store.token_codec import frame_checksums
from geo3d.features_store.tolerance import DEFAULT_RECOMPUTE_ATOL

from helpers import run_geo3d


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """40 frames, 5 shards of 8: built once, copied per test."""
    root = tmp_path_factory.mktemp("pristine")
    make_synthetic_store(root / "s", frames=40, shard_frames=8)
    return root / "s"


@pytest.fixture
def store_path(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "s")
    return tmp_path / "s"


def kinds(report) -> dict[str, list[int]]:
    return {f.kind: f.frames for f in report.faults}


def test_clean_store_is_clean(store_path):
    report = verify_store(store_path, progress=False)
    assert report.ok, report.summary()
    assert report.committed_shards == 5 and report.levels["store"]["frames"] == 40
    assert "CLEAN" in report.summary()


def test_flipped_byte_names_the_frame(store_path):
    shard_file = store_path / "tokens/c/1/0/0/0"  # shard 1 = frames 8..15, 1-frame chunks of 2*4*8*2 = 128 B
    data = bytearray(shard_file.read_bytes())
    data[3 * 128 + 17] ^= 0x01  # a single bit inside frame 11
    shard_file.write_bytes(bytes(data))
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"checksum": [11]}
    assert report.damaged_shards() == [1]


def test_truncated_chunk_makes_its_shard_undecodable(store_path):
    shard_file = store_path / "tokens/c/2/0/0/0"
    shard_file.write_bytes(shard_file.read_bytes()[:300])
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"undecodable": list(range(16, 24))}
    assert report.damaged_shards() == [2]


def test_deleted_chunk_is_missing(store_path):
    os.remove(store_path / "tokens/c/4/0/0/0")
    os.remove(store_path / "index/checksum/c/0")
    report = verify_store(store_path, progress=False)
    assert [(f.kind, f.shards) for f in report.faults] == [("missing_chunk", [0]), ("missing_chunk", [4])]
    assert report.bad_frames() == list(range(0, 8)) + list(range(32, 40))
    assert "tokens/c/4/0/0/0" in report.summary()


def test_missing_marker_lists_the_frame_range(store_path):
    os.remove(store_path / "commits" / L.marker_name(3))
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"uncommitted": list(range(24, 32))}
    assert report.damaged_shards() == []  # nothing to un-commit: precompute already sees it as missing
    assert "24-31" in report.summary()


def test_nan_frame_is_found_even_with_a_consistent_checksum(store_path):
    """A NaN the writer would have refused, planted behind the API with checksums and digest updated."""
    group = zarr.open_group(store_path, mode="r+")
    tok, sums = group["tokens"], group["index/checksum"]
    shard = np.asarray(tok[8:16])
    shard[5, 1, 2, 3] = 0x7FC0  # bf16 quiet NaN, frame 13
    tok[8:16] = shard
    new_sums = frame_checksums(shard)
    sums[8:16] = new_sums
    marker_path = store_path / "commits" / L.marker_name(1)
    marker = json.loads(marker_path.read_text())
    ints = {k: np.asarray(group[f"index/{k}"][8:16]) for k in L.INT_INDEX}
    marker["index_digest"] = L.index_digest(ints, np.asarray(group["index/content_id"][8:16]), new_sums)
    marker_path.write_text(json.dumps(marker))
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"nonfinite": [13]}


def test_corrupted_index_chunk_is_caught_by_the_marker_digest(store_path):
    ep = zarr.open_array(store_path / "index/episode_index", mode="r+")
    ep[20] = 99  # a plausible-looking but wrong value, rewritten through zarr (decodes fine)
    report = verify_store(store_path, progress=False)
    assert {f.kind for f in report.faults} == {"index"}
    assert report.damaged_shards() == [2]
    assert 20 in report.bad_frames()


def test_compressed_store_flipped_byte_is_caught(tmp_path):
    make_synthetic_store(tmp_path / "z", frames=16, shard_frames=8, compressor="zstd")
    f = tmp_path / "z/tokens/c/0/0/0/0"
    data = bytearray(f.read_bytes())
    data[40] ^= 0xFF
    f.write_bytes(bytes(data))
    report = verify_store(tmp_path / "z", progress=False)
    assert not report.ok and report.damaged_shards() == [0]
    assert set(report.bad_frames()) <= set(range(8)) and report.bad_frames()


def test_mark_damaged_then_rewrite_gives_a_clean_store(store_path):
    shard_file = store_path / "tokens/c/1/0/0/0"
    data = bytearray(shard_file.read_bytes())
    data[10] ^= 0x80
    shard_file.write_bytes(bytes(data))
    truncated = store_path / "tokens/c/3/0/0/0"  # zarr would refuse to rewrite an unreadable shard in place
    truncated.write_bytes(truncated.read_bytes()[:100])
    report = verify_store(store_path, progress=False)
    store = FeatureStore.open(store_path)
    assert store.mark_damaged(report.damaged_shards()) == [1, 3]
    assert store.missing_shards() == [1, 3]  # precompute redoes exactly these
    write_all_shards(store)
    assert verify_store(store_path, progress=False).ok


def test_recompute_compares_bit_exact_on_cpu(store_path):
    store = FeatureStore.open(store_path)

    def same(frames):
        return torch.cat([synthetic_tokens(store.spec, range(int(f), int(f) + 1)) for f in frames])

    def other_encoder(frames):  # a store built with another encoder config: different tokens
        return torch.cat([synthetic_tokens(store.spec, range(int(f), int(f) + 1), seed=1) for f in frames])

    good = verify_store(store_path, recompute=same, recompute_frames=5, seed=3, progress=False)
    assert good.ok and good.recompute["bit_exact"] and good.recompute["frames_checked"] == 5
    bad = verify_store(store_path, recompute=other_encoder, recompute_frames=5, seed=3, progress=False)
    assert kinds(bad) == {"recompute": good.recompute["frames"]}
    assert "bit-exact (store and recompute both on CPU" in good.recompute["comparison"]


def test_recompute_on_another_device_type_uses_the_stated_atol(store_path):
    """Off-CPU: kernel rounding within the atol is a note; another encoder's tokens are a fault; the report
    says which tolerance was used and why."""
    store = FeatureStore.open(store_path)

    def rounded(frames):  # the store's tokens, each value moved by 1/64 (a bf16 kernel difference of ~1 ulp)
        t = torch.cat([synthetic_tokens(store.spec, range(int(f), int(f) + 1)) for f in frames])
        return (t.float() + 1 / 64).to(torch.bfloat16)

    def other_encoder(frames):
        return torch.cat([synthetic_tokens(store.spec, range(int(f), int(f) + 1), seed=1) for f in frames])

    for fn in (rounded, other_encoder):
        fn.device = "cuda:0"
    near = verify_store(store_path, recompute=rounded, recompute_frames=5, progress=False)
    assert near.ok and not near.recompute["bit_exact"] and near.recompute["atol"] == DEFAULT_RECOMPUTE_ATOL
    assert "store written on cpu, recompute on cuda" in near.recompute["comparison"]
    assert "not bit-exact" in near.notes[0] and f"atol {DEFAULT_RECOMPUTE_ATOL:g}" in near.summary()
    wrong = verify_store(store_path, recompute=other_encoder, recompute_frames=5, progress=False)
    assert {f.kind for f in wrong.faults} == {"recompute"} and "default atol" in wrong.faults[0].message
    strict = verify_store(store_path, recompute=rounded, recompute_frames=5, recompute_atol=1e-3, progress=False)
    assert {f.kind for f in strict.faults} == {"recompute"} and "explicit --recompute-atol" in strict.faults[0].message
    lax = verify_store(store_path, recompute=other_encoder, recompute_frames=5, recompute_atol=float("inf"),
                       progress=False)
    assert lax.ok and lax.recompute["max_abs_diff"] > 1


def test_broken_metadata_and_newer_schema(store_path):
    zjson = store_path / "zarr.json"
    root = json.loads(zjson.read_text())
    del root["attributes"]["geo3d"]["spec"]["encoder"]
    zjson.write_text(json.dumps(root))
    report = verify_store(store_path, progress=False)
    assert [f.kind for f in report.faults] == ["metadata"]
    root["attributes"]["geo3d"]["schema_version"] = 7
    zjson.write_text(json.dumps(root))
    with pytest.raises(StoreError, match="newer"):
        verify_store(store_path, progress=False)


def test_cli_damaged_metadata_is_a_fault_newer_schema_is_usage(store_path):
    zjson = store_path / "zarr.json"
    good = zjson.read_text()
    zjson.write_text("{broken")
    result = run_geo3d(["verify-cache", str(store_path), "--no-dataset", "--no-progress"], expect=None)
    assert result.returncode == 1 and "metadata" in result.output
    root = json.loads(good)
    root["attributes"]["geo3d"]["schema_version"] = 7
    zjson.write_text(json.dumps(root))
    result = run_geo3d(["verify-cache", str(store_path), "--no-dataset"], expect=None)
    assert result.returncode == 2 and "upgrade geo3d" in result.output


def test_malformed_marker_is_a_fault_and_mark_damaged_clears_it(store_path):
    (store_path / "commits" / L.marker_name(2)).write_text("{not json")
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"marker": list(range(16, 24))}
    store = FeatureStore.open(store_path)
    assert store.mark_damaged(report.damaged_shards()) == [2] and store.missing_shards() == [2]


def test_frame_absent_inside_a_shard_is_named_missing(store_path):
    """A shard file whose index marks one inner chunk empty: zarr silently returns the fill value."""
    shard_file = store_path / "tokens/c/0/0/0/0"
    data = bytearray(shard_file.read_bytes())
    index_at = len(data) - (8 * 16 + 4)  # shard index at the end: (offset, nbytes) uint64 pairs + crc32c
    offsets = list(struct.unpack("<16Q", data[index_at:index_at + 128]))
    offsets[2 * 6:2 * 6 + 2] = [2**64 - 1, 2**64 - 1]  # frame 6: "chunk not present"
    from google_crc32c import value as crc32c

    packed = struct.pack("<16Q", *offsets)
    data[index_at:] = packed + struct.pack("<I", crc32c(packed))
    shard_file.write_bytes(bytes(data))
    report = verify_store(store_path, progress=False)
    assert kinds(report) == {"missing_chunk": [6]}
