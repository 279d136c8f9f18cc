"""`geo3d export`: every format round-trips the store bit for bit (bf16 incl. -0 and subnormals), with the
per-frame index and metadata; incomplete stores, existing outputs and bad selections are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geo3d.features_store import FeatureReader, FeatureStore, StoreLayout, StoreSpec
from geo3d.features_store.export import INDEX_FIELDS, read_export
from geo3d.features_store.store import open_arrays

from helpers import Result, run_geo3d

ENCODER = {"name": "export-test", "fingerprint": "export-0", "config": {"seed": 1}}
DATASETS = [{"name": "libero_spatial_no_noops_1.0.0_lerobot", "num_frames": 30},
            {"name": "libero_object_no_noops_1.0.0_lerobot", "num_frames": 21}]
N, V, T, D, SHARD = 51, 2, 4, 8, 8


def _tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 0x7F80, (N, V, T, D), generator=g, dtype=torch.int32)  # finite, all exponents
    bits[0, 0, 0, :4] = torch.tensor([0x8000, 0x0001, 0x807F, 0x7F7F])  # -0, subnormals, max finite
    sign = torch.randint(0, 2, (N, V, T, D), generator=g, dtype=torch.int32) << 15
    return (bits | sign).to(torch.int16).view(torch.bfloat16)


def _make_store(path: Path, commit_all: bool = True) -> tuple[Path, torch.Tensor]:
    spec = StoreSpec(frames=N, views=V, tokens=T, dim=D, encoder=ENCODER, preprocessing={"views": ["a", "w"]},
                     dataset={"suite": "demo", "datasets": DATASETS, "num_frames": N},
                     layout=StoreLayout(shard_frames=SHARD))
    store = FeatureStore.open_or_create(path, spec)
    tokens = _tokens()
    ds = np.repeat([0, 1], [30, 21])
    ep = np.repeat([0, 1, 0, 1], [10, 20, 11, 10])
    fr = np.concatenate([np.arange(10), np.arange(20), np.arange(11), np.arange(10)])
    for i in range(spec.num_shards):
        if not commit_all and i == 3:
            continue
        r = store.shard_range(i)
        sl = slice(r.start, r.stop)
        store.write_shard(i, tokens[sl], {"dataset_id": ds[sl], "episode_index": ep[sl], "frame_index": fr[sl],
                                          "content_id": np.arange(r.start, r.stop, dtype=np.uint64) * 2**40 + 7})
    return path, tokens


def _export(store: Path, *args: str, expect: int = 0) -> Result:
    return run_geo3d(["export", str(store), "--no-progress", *args], expect=expect)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    return _make_store(tmp_path_factory.mktemp("export") / "store")


@pytest.mark.parametrize("fmt", ["hdf5", "npy", "pt"])
def test_export_round_trips_bit_for_bit(store, tmp_path, fmt):
    path, tokens = store
    out = tmp_path / f"out.{fmt}"
    _export(path, "--format", fmt, "--out", str(out))
    meta, blocks, index = read_export(out, fmt)
    got = np.concatenate(list(blocks))
    assert got.dtype == np.uint16 and got.shape == (N, V, T, D)
    assert np.array_equal(got, tokens.view(torch.uint16).numpy())  # every bit, incl. -0 and subnormals
    reader = FeatureReader(path)
    assert np.array_equal(index["global_index"], np.arange(N))
    for k in INDEX_FIELDS[1:]:
        assert np.array_equal(np.asarray(index[k]).astype(np.uint64), reader.index(k).astype(np.uint64)), k
    assert meta["encoder"] == {**ENCODER, "tap": "info_sharing"} and meta["frames"] == N  # the tap: issue 23 and meta["dtype"] == "bfloat16"
    assert meta["store_metadata"]["spec"]["dataset"]["datasets"] == DATASETS
    assert not list(tmp_path.glob(".*tmp*"))  # temp output renamed away


def test_export_pt_holds_real_bf16(store, tmp_path):
    path, tokens = store
    out = tmp_path / "pt"
    _export(path, "--format", "pt", "--out", str(out), "--frames", "5:20")
    parts = json.loads((out / "parts.json").read_text())
    loaded = [torch.load(out / p["file"], weights_only=True) for p in parts]
    assert all(d["tokens"].dtype == torch.bfloat16 for d in loaded)
    got = torch.cat([d["tokens"] for d in loaded])
    assert torch.equal(got.view(torch.int16), tokens[5:20].view(torch.int16))
    assert torch.cat([d["global_index"] for d in loaded]).tolist() == list(range(5, 20))


def test_export_suite_selection(store, tmp_path):
    path, tokens = store
    out = tmp_path / "obj.h5"
    _export(path, "--format", "hdf5", "--out", str(out), "--suite", "libero_object")
    meta, blocks, index = read_export(out, "hdf5")
    assert index["global_index"].tolist() == list(range(30, 51)) and set(index["dataset_id"]) == {1}
    assert np.array_equal(np.concatenate(list(blocks)), tokens[30:].view(torch.uint16).numpy())
    bad = _export(path, "--format", "hdf5", "--out", str(tmp_path / "x.h5"), "--suite", "libero_goal", expect=2)
    assert "libero_goal" in bad.stderr and not (tmp_path / "x.h5").exists()
    bad = _export(path, "--format", "hdf5", "--out", str(tmp_path / "x.h5"), "--frames", "1:2:3", expect=2)
    assert "START:STOP" in bad.stderr


def test_export_refuses_existing_output_unless_overwrite(store, tmp_path):
    path, _ = store
    out = tmp_path / "t.npy"
    out.mkdir()
    (out / "keep").write_text("mine")
    proc = _export(path, "--format", "npy", "--out", str(out), expect=2)
    assert "--overwrite" in proc.stderr and (out / "keep").read_text() == "mine"
    _export(path, "--format", "npy", "--out", str(out), "--overwrite")
    assert not (out / "keep").exists() and (out / "tokens.npy").is_file()


def test_export_refuses_incomplete_store_unless_asked(tmp_path):
    path, tokens = _make_store(tmp_path / "partial", commit_all=False)
    out = tmp_path / "p.h5"
    proc = _export(path, "--format", "hdf5", "--out", str(out), expect=2)
    assert "incomplete" in proc.stderr and "--allow-incomplete" in proc.stderr and not out.exists()
    _export(path, "--format", "hdf5", "--out", str(out), "--allow-incomplete")
    _, blocks, index = read_export(out, "hdf5")
    keep = np.r_[0:24, 32:N]
    assert index["global_index"].tolist() == keep.tolist()
    assert np.array_equal(np.concatenate(list(blocks)), tokens[keep].view(torch.uint16).numpy())


def test_export_refuses_a_corrupted_store_frame(tmp_path):
    path, _ = _make_store(tmp_path / "bad")

    arr = open_arrays(path, mode="r+")["tokens"]
    row = np.asarray(arr[9:10])
    row[0, 0, 0, 0] ^= 1
    arr[9:10] = row
    proc = _export(path, "--format", "npy", "--out", str(tmp_path / "o"), expect=2)
    assert "checksum" in proc.stderr and "[9]" in proc.stderr and not (tmp_path / "o").exists()
