"""One dataset check shared by precompute, verify-cache and train (issue 25 rows 2, 5, 6, 13): on copies of the
demo data damaged one way each, every verb gives the same one-line message naming the file or episode, exit 2,
and changes nothing (no store made, the store checked untouched, no run dir left). In-process (CliRunner)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from geo3d.core.errors import DataError, StoreError
from geo3d.data.mixture import LiberoMixture
from geo3d.data.video_decode import VideoFile
from geo3d.features_store import FeatureReader
from geo3d.features_store.testing import make_synthetic_store
from geo3d.train.store_check import check_store_matches_dataset

from demo_copies import SPATIAL, copy_demo, empty_episode, parquet_path, set_info_fps, snapshot, truncate, video_path
from helpers import run_geo3d


def geo3d(*args: str) -> tuple[int, str]:
    r = run_geo3d(args, expect=None)
    return r.returncode, r.stderr


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return copy_demo(tmp_path / "data")


def every_verb_refuses(root: Path, tmp_path: Path, *needles: str) -> None:
    """precompute, verify-cache (the store's dataset check) and train: exit 2, the same reason, nothing changed."""
    store, other_store, run = tmp_path / "new.zarr", tmp_path / "made.zarr", tmp_path / "run"
    make_synthetic_store(other_store, frames=579, dataset={"suite": "libero_spatial", "num_frames": 579})
    before = snapshot(other_store)
    results = {
        "precompute": geo3d("precompute", "--suite", "libero_spatial", "--data-root", str(root), "--store",
                            str(store), "precompute.decode_workers=0"),
        "verify-cache": geo3d("verify-cache", str(other_store), "--data-root", str(root), "--no-progress"),
        "train": geo3d("train", "--suite", "libero_spatial", "--data-root", str(root), "--compressor", "none",
                       "--config", "train/demo", "--out", str(run)),
    }
    for verb, (code, err) in results.items():
        assert code == 2, (verb, code, err)
        assert err.startswith("error: ") and "Traceback" not in err and "Errno" not in err, (verb, err)
        for n in needles:
            assert n in err, (verb, n, err)
    assert not store.exists() and not run.exists() and snapshot(other_store) == before


def test_row2_an_episode_with_0_frames_is_named_by_every_verb(root, tmp_path):
    empty_episode(root, 2)
    every_verb_refuses(root, tmp_path, f"{root / SPATIAL}: episode 2 has 0 frames", "meta/episodes.jsonl")


def test_row5_a_wrong_info_json_fps_is_named_as_such(root, tmp_path):
    set_info_fps(root, 7)
    every_verb_refuses(root, tmp_path, "meta/info.json says fps 7, but video", "has 20 frames/s")
    mixture = LiberoMixture("libero_spatial", root, image_size=None)  # also where a decode finds it, not only up front
    with pytest.raises(DataError, match="info.json says fps 7, but video .* has 20 frames/s"):
        list(mixture.iter_episode(0, 1))


def test_row6_a_truncated_parquet_is_read_by_every_verb_including_verify_cache(root, tmp_path):
    truncate(parquet_path(root, 3))
    every_verb_refuses(root, tmp_path, f"cannot read {parquet_path(root, 3)}")


def test_row13_a_truncated_mp4_is_named_without_ffmpegs_error_code(root, tmp_path):
    truncate(video_path(root, 0))
    every_verb_refuses(root, tmp_path, f"cannot open video {video_path(root, 0)}: invalid data found when "
                                       "processing input (a truncated or damaged file)")


def test_row13_a_decode_error_mid_file_has_the_same_words(root):
    """A file whose header survived fails while decoding: FFmpeg's error (here raised by the decoder cursor
    itself) becomes the same one-line DataError, without the raw code."""
    path = video_path(root, 1)
    vf = VideoFile(path)
    assert len(list(vf.read(0.0, 20, 0, 2))) == 2  # a cursor positioned in a real file

    def failing():
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input", str(path))
        yield

    vf._frames = failing()
    with pytest.raises(DataError) as e:
        list(vf.read(0.0, 20, 2, 2))
    assert str(e.value).startswith(f"cannot decode video {path}: invalid data found when processing input")
    assert "Errno" not in str(e.value) and "1094995529" not in str(e.value)


def test_row11_a_store_of_another_suite_is_named_as_such(root, tmp_path):
    """The store-vs-dataset check (train, verify-cache) says which suite the store holds and which the run asks for,
    not "another dataset version" (the suites' frame counts differ)."""
    store = tmp_path / "spatial.zarr"
    make_synthetic_store(store, frames=546, dataset={"suite": "libero_spatial", "num_frames": 546})
    objects = LiberoMixture("libero_object", root)
    with pytest.raises(StoreError) as e:
        check_store_matches_dataset(FeatureReader(store), objects, store, check_frames=4)
    assert str(e.value) == (f"store {store}: this store holds libero_spatial; the run asks for libero_object: pass "
                            "--suite libero_spatial, or precompute a store for libero_object (geo3d precompute "
                            "--suite libero_object)")
