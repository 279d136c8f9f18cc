"""`geo3d precompute --limit-frames N` (issue 25 row 15): a trial store of the first shards, marked so, that no run
trains on by mistake; verify-cache names it; the same command without the flag completes it. In-process, on a
copy of the demo data with a small tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo_copies import copy_demo
from geo3d.features_store.store import TRIAL_FILE, committed_shards
from helpers import run_geo3d

SMALL = ["--batch-size", "4", "data.image_size=56", "encoder.tokens_per_view=4", "encoder.tiny.width=32",
         "encoder.tiny.heads=2", "encoder.tiny.out_dim=16", "store.shard_frames=64", "precompute.decode_workers=0"]
FRAMES, SHARDS = 546, 9  # libero_spatial of the demo data, 64-frame shards


def geo3d(*args: str) -> tuple[int, str, str]:
    r = run_geo3d(args, expect=None)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return copy_demo(tmp_path_factory.mktemp("demo") / "data")


def precompute(root: Path, store: Path, *extra: str) -> tuple[int, str, str]:
    return geo3d("precompute", "--suite", "libero_spatial", "--data-root", str(root), "--store", str(store),
                 *SMALL, *extra)


@pytest.mark.slow  # the completing run encodes all 546 frames
def test_row15_a_trial_store_is_marked_refused_by_train_and_completed_by_a_plain_rerun(root, tmp_path):
    store, run = tmp_path / "store.zarr", tmp_path / "run"
    code, _, err = precompute(root, store, "--limit-frames", "70")
    assert code == 0, err[-2000:]
    assert committed_shards(store) == [0, 1]  # 70 frames -> whole shards 0 and 1 only
    assert f"trial store: frames 0..127 of {FRAMES} (--limit-frames 70, whole shards of 64)" in err
    assert json.loads((store / TRIAL_FILE).read_text())["limit_frames"] == 70

    code, out, _ = geo3d("verify-cache", str(store), "--data-root", str(root), "--no-progress")
    assert code == 1, out
    assert f"this is a trial store (geo3d precompute --limit-frames 70: shards 0..1 of {SHARDS})" in out, out
    code, _, err = geo3d("train", "--suite", "libero_spatial", "--data-root", str(root), "--store", str(store),
                         "--config", "train/demo", "--compressor", "qformer", "--out", str(run), "--max-steps", "2",
                         "model.geometry.tokens_per_view=4", "model.geometry.dim=16", "data.image_size=56")
    assert code == 2 and "is a trial store (geo3d precompute --limit-frames 70" in err, err
    assert "no run trains on it" in err and not run.exists()

    code, _, err = precompute(root, store)  # the same command without the flag: the real store
    assert code == 0, err[-2000:]
    assert committed_shards(store) == list(range(SHARDS)) and not (store / TRIAL_FILE).exists()
    code, out, _ = geo3d("verify-cache", str(store), "--data-root", str(root), "--no-progress")
    assert code == 0 and "CLEAN" in out and "trial store" not in out, out


def test_a_trial_of_more_frames_than_the_store_holds_is_a_complete_store(tmp_path):
    """--limit-frames past the end encodes everything: a complete store, no trial marker (synthetic, tiny)."""
    from data_fixtures import make_synthetic_libero

    data = make_synthetic_libero(tmp_path / "data", suites=("libero_spatial",), episodes_per_suite=1, length=10,
                                 size=64)
    store = tmp_path / "store.zarr"
    code, _, err = precompute(data, store, "--limit-frames", "1000")
    assert code == 0 and "trial store" not in err, err[-2000:]
    assert committed_shards(store) == [0] and not (store / TRIAL_FILE).exists()
